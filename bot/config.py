"""config.yaml, overridden by WECOM_BOT_<SECTION>__<KEY> environment variables (DESIGN §3).

Errors name the key and the file. Secrets are SecretStr: they never reach a log or a repr.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "WECOM_BOT_"
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
    calls_per_minute: int = 10_000   # per API, per corp (45009 past it): the client paces itself under it

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
    alpha: float = 0.001  # chance a healthy store is flagged on a given day (see qr_health.stalled_verdict)
    min_rate: float = 0.2
    grace_minutes: float = 5.0  # an add younger than this has not had its chance to join yet


class CallbackSettings(_Strict):
    max_body_bytes: int = 64 * 1024
    max_clock_skew_seconds: int = 300


class WorkerSettings(_Strict):
    threads: int = 4
    poll_seconds: float = 0.2
    lease_seconds: int = 30


class Store(_Strict):
    code: str = Field(min_length=1, max_length=30)  # the `state` on both QR codes: ≤ 30 chars
    name: str
    clerks: list[str] = Field(min_length=1, max_length=100)
    benefit: str | None = None


class Settings(_Strict):
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
    stores: list[Store] = []
    stores_file: str | None = None

    # Where this came from, to resolve relative paths and to name in errors.
    source: Path | None = Field(default=None, exclude=True)

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


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> list[str]:
    """WECOM_BOT_WECOM__SECRET=x sets raw['wecom']['secret']; returns the keys set."""
    applied = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name.removeprefix(ENV_PREFIX).split("__")]
        if not all(parts):
            continue
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        # YAML-parse the value so numbers, lists and booleans arrive typed.
        try:
            node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            node[parts[-1]] = value
        applied.append(".".join(parts))
    return applied


def _format_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "missing":
            msg = "missing required key"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def load_stores_file(path: Path) -> list[dict[str, Any]]:
    """stores.csv: code,name,clerks[,benefit]; clerks separated by '|' or spaces."""
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            try:
                clerks = [c for c in re.split(r"[|\s]+", row["clerks"].strip()) if c]
                rows.append({"code": row["code"].strip(), "name": row["name"].strip(), "clerks": clerks,
                             **({"benefit": row["benefit"].strip()} if row.get("benefit") else {})})
            except (KeyError, AttributeError):
                raise ConfigError(f"{path}:{lineno}: expected columns code,name,clerks[,benefit]") from None
    return rows


def load_settings(path: str | Path = "config.yaml", environ: dict[str, str] | None = None) -> Settings:
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (pass --config PATH)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    env_keys = _apply_env(raw, environ)
    where = str(path) + (f" (with {', '.join(ENV_PREFIX + k.upper().replace('.', '__') for k in env_keys)})"
                         if env_keys else "")
    stores_file = raw.get("stores_file")
    if stores_file:
        if raw.get("stores"):
            raise ConfigError(f"{where}: stores: give either stores or stores_file, not both")
        raw["stores"] = load_stores_file((path.parent / stores_file).resolve())
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, where)) from None
    settings.source = path.resolve()
    codes = [s.code for s in settings.stores]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise ConfigError(f"{where}: stores: duplicate store code {', '.join(dupes)}")
    return settings
