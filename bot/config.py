"""config.yaml, overridden by WECOM_BOT_<SECTION>__<KEY> environment variables (DESIGN §3).

The file is YAML; a variable is read as its key's declared type (pydantic-settings' EnvSettingsSource):
a string stays the exact string (`s3cr3t #2024`, `0123456`), numbers and booleans are parsed as such,
lists and mappings are JSON. A WECOM_BOT_ variable that names no key is logged and ignored; an
unknown key in the file is an error. Errors name the key, the file and the variable. Secrets are
SecretStr: they never reach a log, a repr or an error.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

log = logging.getLogger(__name__)

ENV_PREFIX = "WECOM_BOT_"
CONFIG_ENV = "WECOM_BOT_CONFIG"   # names the config file (the CLI reads it), not a key in it
PLACEHOLDER_ADMIN_TOKEN = "change-me"


class ConfigError(Exception):
    """A wrong or missing configuration key, with where it came from."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WeComSettings(_Strict):
    corp_id: str
    agent_id: int
    secret: SecretStr
    token: SecretStr
    encoding_aes_key: SecretStr
    api_base_url: str = "https://qyapi.weixin.qq.com/cgi-bin/"
    timeout_seconds: float = 5.0
    max_attempts: int = 4
    calls_per_minute: int = 10_000   # per API, per corp (45009 past it): all processes together stay under it
    calls_per_hour: int = 150_000    # per API, per corp, each clock hour (45009 past it, blocked to the hour's end)
    # processes that call WeCom (workers, scheduler): if PostgreSQL cannot be reached for the shared
    # count, each paces itself at the limits divided by this
    expected_processes: int = 4

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_key_43(cls, v: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[A-Za-z0-9]{43}", v.get_secret_value()):
            raise ValueError("must be 43 characters [A-Za-z0-9] (the EncodingAESKey from the admin console)")
        return v

    @field_validator("api_base_url")
    @classmethod
    def _slash(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"


class BroadcastSettings(_Strict):
    slots: list[str] = ["10:00", "12:00", "16:00", "20:00"]
    receive_cap: Literal["daily_1", "weekly_7", "days_in_month"] = "daily_1"
    misfire_grace_minutes: int = 10        # a slot the scheduler missed by more than this is not fired
    remind_after_minutes: int = 60         # remind_groupmsg_send an owner who has not confirmed by then
    reminder_spread_seconds: int = 50      # owner reminders go out over this many seconds after :00 + 5 s
    follow_up_minutes: int = 5             # how often results are synced and reminders considered

    @field_validator("slots")
    @classmethod
    def _hhmm(cls, v: list[str]) -> list[str]:
        for s in v:
            if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", s):
                raise ValueError(f"slot {s!r} is not HH:MM")
        if len(set(v)) != len(v):
            raise ValueError("a slot is listed twice")
        return sorted(v)


class QrHealthSettings(_Strict):
    window_minutes: int = 120
    min_adds: int = 8
    alpha: float = 0.001  # chance a healthy store is flagged on a given day (see bot.funnel.stalled)
    min_rate: float = 0.2
    grace_minutes: float = 5.0  # an add younger than this has not had its chance to join yet
    concurrency: int = Field(default=8, ge=1)  # stores a pass checks at once: 4,800 × 2+ calls fit in 5 min
    # Customers who report from the group-QR page (/q/): this many distinct ones since the store's last
    # QR join (inside window_minutes), with report_min_adds adds since that join, open a `reported`
    # finding at once; one report with the stalled rule at report_alpha, from report_min_adds adds,
    # does too (bot.funnel.reports). Defaults: < 1 false alarm per 1,000 healthy store-days at 200
    # adds/day in scripts/bench_qr_health.py.
    reports_to_alert: int = Field(default=2, ge=1)
    report_alpha: float = 0.0003
    report_min_adds: int = Field(default=6, ge=1)


class DigestSettings(_Strict):
    time: str = "09:30"                    # each clerk's morning digest of yesterday (bot.digest), local time

    @field_validator("time")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", v):
            raise ValueError(f"digest time {v!r} is not HH:MM")
        return v


class TagSettings(_Strict):
    """Corp customer tags (企业客户标签, bot.tags): every customer added through a store QR gets the tag
    named after the store in the group `store_group`, and `joined_tag` (in `joined_group`) once they
    join its group. WeCom caps group and tag names at 30 characters (doc 92117)."""
    enabled: bool = True
    store_group: str = Field(default="门店", min_length=1, max_length=30)
    joined_group: str = Field(default="社群", min_length=1, max_length=30)
    joined_tag: str = Field(default="已进群", min_length=1, max_length=30)


class CallbackSettings(_Strict):
    max_body_bytes: int = 64 * 1024
    max_clock_skew_seconds: int = 300


class WorkerSettings(_Strict):
    threads: int = 4                                      # outbox senders per worker process
    dispatch_threads: int = Field(default=2, ge=1)        # event dispatchers per worker process
    poll_seconds: float = 0.2
    lease_seconds: int = 30


class PageSettings(_Strict):
    """Limits of the public member pages (chain sign-ups, later the group-QR page). A whole group's
    members often share one carrier-NAT address, so the per-address limit is loose and the tight one
    is per (address, buyer)."""
    max_body_bytes: int = 8 * 1024               # an order or a report; 413 past it, read while streaming
    orders_per_buyer_per_minute: int = 6         # per (client address, name + phone tail); 0 = no limit
    orders_per_address_per_minute: int = 300     # per client address, all buyers together; 0 = no limit
    sidebar_link_grace_hours: int = 6            # a slot's sidebar link works until the end of its day + this
    csv_link_days: int = 7                       # the pick-list CSV link in a clerk's message
    qr_link_days: int = 30                       # the group-QR page link in a welcome (/q/{token})


class AdminSettings(_Strict):
    """The ops console (/admin, bot.admin): WeCom login and its signed session cookie. The two base URLs
    are WeCom's (doc 91022 网页授权登录, doc 91025 企业微信Web登录); the sandbox stands in for them."""
    session_hours: float = Field(default=12, gt=0)
    oauth_authorize_url: str = "https://open.weixin.qq.com/connect/oauth2/authorize"
    web_login_url: str = "https://login.work.weixin.qq.com/wwlogin/sso/login"


class Store(_Strict):
    code: str = Field(min_length=1, max_length=30)  # the `state` on both QR codes: ≤ 30 chars
    name: str
    clerks: list[str] = Field(min_length=1, max_length=100)
    benefit: str | None = None
    # who takes over a departing clerk's customers and groups; else the remaining clerk with fewest customers
    successor: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", env_prefix=ENV_PREFIX, env_nested_delimiter="__")

    timezone: str = "Asia/Shanghai"
    database_url: str = "sqlite:///var/wecom-bot.db"
    public_base_url: str = "http://127.0.0.1:8000"
    admin_token: SecretStr = SecretStr(PLACEHOLDER_ADMIN_TOKEN)
    wecom: WeComSettings
    calendar_dir: str = "content_calendar"
    broadcast: BroadcastSettings = BroadcastSettings()
    qr_health: QrHealthSettings = QrHealthSettings()
    callback: CallbackSettings = CallbackSettings()
    worker: WorkerSettings = WorkerSettings()
    pages: PageSettings = PageSettings()
    link_keys: list[SecretStr] = []     # earlier admin_tokens: links they signed still verify (rotation)
    trusted_proxies: list[str] = []     # addresses (or CIDR networks) whose X-Forwarded-For is believed
    retention_days: int = Field(default=90, ge=7)  # events, outbox rows, deliveries, members' order details
    # One line per HTTP request from `serve`. It costs: about a third of the callback rate and half
    # again the welcome latency in a burst on two cores (scripts/bench_callbacks.py); behind nginx,
    # whose access log says the same, it may go.
    access_log: bool = True
    ops_userids: list[str] = []         # WeCom members told what only ops can fix (bot.staff.ops)
    digest: DigestSettings = DigestSettings()
    admin: AdminSettings = AdminSettings()   # the ops console's login and session (bot.admin)
    tags: TagSettings = TagSettings()   # corp tag group of the store tags, and the 已进群 tag
    stores: list[Store] = []
    stores_file: str | None = None

    # Where this came from, to resolve relative paths and to name in errors.
    source: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """`Settings(...)` takes only what it is given: load_settings reads the file and the environment
        (the environment it is handed, so tests and tools stay hermetic)."""
        return (init_settings,)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def path(self, p: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        base = self.source.parent if self.source else Path.cwd()
        return (base / p).resolve()

    @property
    def sqlite_path(self) -> Path | None:
        if self.database_url.startswith("sqlite:///"):
            return self.path(self.database_url.removeprefix("sqlite:///"))
        return None

    @property
    def resolved_database_url(self) -> str:
        p = self.sqlite_path
        return f"sqlite:///{p}" if p else self.database_url


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over the mapping load_settings was given, not os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def env_keys(model: type[BaseModel], prefix: str = ENV_PREFIX, path: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every variable that names a key, with the key: WECOM_BOT_WECOM → (wecom,), WECOM_BOT_WECOM__SECRET →
    (wecom, secret), WECOM_BOT_LINK_KEYS → (link_keys,) (a JSON list)."""
    out = {}
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # `source`: where the file was, not a setting
        var, key = f"{prefix}{name.upper()}", path + (name,)
        out[var] = key
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out |= env_keys(field.annotation, var + "__", key)
    return out


def env_values(settings_cls: type[BaseSettings], environ: Mapping[str, str], where: str = "environment"
               ) -> tuple[dict[str, Any], dict[str, tuple]]:
    """The WECOM_BOT_ variables that name keys, as nested values (strings as given, lists and mappings
    decoded from JSON; pydantic coerces each to its key's type), and which variable set which key.
    Others are logged by name and ignored: the tests' WECOM_BOT_TEST_PG_URL is no business of ours."""
    known = env_keys(settings_cls)
    given = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and k != CONFIG_ENV}
    for name in sorted(set(given) - set(known)):
        log.warning("%s names no configuration key; ignored", name)
    used = {k: v for k, v in given.items() if k in known}
    try:
        values = _EnvironSource(settings_cls, used)()
    except SettingsError:
        bad = []
        for k, v in used.items():
            try:
                _EnvironSource(settings_cls, {k: v})()
            except SettingsError:
                bad.append(k)
        raise ConfigError("\n".join(
            f"{where} (with {k}): {'.'.join(known[k])}: not valid JSON (lists and mappings are given as JSON: "
            f"[\"10:00\", \"16:00\"], {{\"min_adds\": 5}})" for k in bad or used)) from None
    return values, {known[k]: k for k in used}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Origin:
    """Names where a key came from: the file, or the file and the variable that set it."""

    def __init__(self, path: Path, by_env: dict[tuple, str]):
        self.path, self.by_env = path, by_env

    def __call__(self, loc: tuple = ()) -> str:
        for n in range(len(loc), 0, -1):
            var = self.by_env.get(tuple(loc[:n]))
            if var:
                return f"{self.path} (with {var})"
        return str(self.path)


def _format_error(err: ValidationError, origin: _Origin) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]   # never str(err): pydantic's own text echoes the input, and the input may be a secret
        if e["type"] == "missing":
            msg = "missing required key"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{origin(tuple(e['loc']))}: {key}: {msg}")
    return "\n".join(lines)


def load_stores_file(path: Path) -> list[dict[str, Any]]:
    """stores.csv: code,name,clerks[,benefit][,successor]; clerks separated by '|' or spaces."""
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            try:
                clerks = [c for c in re.split(r"[|\s]+", row["clerks"].strip()) if c]
                rows.append({"code": row["code"].strip(), "name": row["name"].strip(), "clerks": clerks,
                             **({"benefit": row["benefit"].strip()} if row.get("benefit") else {}),
                             **({"successor": row["successor"].strip()} if (row.get("successor") or "").strip()
                                else {})})
            except (KeyError, AttributeError):
                raise ConfigError(f"{path}:{lineno}: expected columns code,name,clerks[,benefit][,successor]") from None
    return rows


def load_settings(path: str | Path = "config.yaml", environ: Mapping[str, str] | None = None) -> Settings:
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (pass --config PATH or set {CONFIG_ENV})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    from_env, by_env = env_values(Settings, environ, where=str(path))
    raw = _merge(raw, from_env)
    origin = _Origin(path, by_env)
    stores_file = raw.get("stores_file")
    if stores_file:
        if raw.get("stores"):
            raise ConfigError(f"{origin(('stores',))}: stores: give either stores or stores_file, not both")
        raw["stores"] = load_stores_file((path.parent / stores_file).resolve())
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, origin)) from None
    settings.source = path.resolve()
    codes = [s.code for s in settings.stores]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise ConfigError(f"{origin(('stores',))}: stores: duplicate store code {', '.join(dupes)}")
    return settings
