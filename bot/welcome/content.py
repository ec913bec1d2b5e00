"""What a welcome says: ops edit it under content_calendar/ (default.yaml `welcome:`, per store in
stores/<CODE>.yaml, templates in templates/). Reloaded when the files change; a broken edit is
logged and the last good content keeps running, so no customer misses a welcome over a typo."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from bot.calendar.files import attachment_path, compile_template, read, render, template_env
from bot.text import truncate_utf8

log = logging.getLogger(__name__)

MAX_TEXT_BYTES = 4000
MAX_ATTACHMENTS = 9
BUILTIN_TEMPLATE = "builtin_welcome.j2"
DEFAULTS: dict[str, Any] = {"template": BUILTIN_TEMPLATE, "benefit": "", "attach_group_qr": True, "attachments": []}
SAMPLE: dict[str, Any] = {"clerk": "zhangsan", "clerk_name": "小张"}   # plus store and benefit, per file


class ContentError(Exception):
    pass


@dataclass(frozen=True)
class WelcomeSpec:
    template: str
    benefit: str
    attach_group_qr: bool
    attachments: list[dict] = field(default_factory=list)  # {"link": {...}} or {"image": "path"}


@dataclass(frozen=True)
class RenderedWelcome:
    text: str
    attach_group_qr: bool
    attachments: list[dict]


class WelcomeContent:
    def __init__(self, calendar_dir: Path):
        self.dir = Path(calendar_dir)
        self.env = template_env(self.dir)
        self._stamp: tuple = ()
        self._default: dict[str, Any] = dict(DEFAULTS)
        self._stores: dict[str, dict[str, Any]] = {}
        self._clerk_names: dict[str, str] = {}
        self.last_error: str | None = None
        self.file_problems: list[str] = []   # attachments whose file is missing: told by check, left out at send
        self.reload_if_changed()

    def _files(self) -> list[Path]:
        files = [self.dir / "default.yaml"] + sorted((self.dir / "stores").glob("*.yaml"))
        return [f for f in files if f.exists()]

    def reload_if_changed(self) -> None:
        files = self._files()
        # templates too: an edited welcome.j2 is rendered once here, before a customer gets it
        watched = files + sorted((self.dir / "templates").rglob("*.j2"))
        stamp = tuple((str(f), f.stat().st_mtime_ns) for f in watched if f.exists())
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            env = template_env(self.dir)   # a fresh one: an edited template is read, and checked
            default, stores, names, missing = self._load(files, env)
        except ContentError as e:
            self.last_error = str(e)
            log.error("welcome content not reloaded, the last good one stays: %s", e)
            return
        self._default, self._stores, self._clerk_names, self.last_error = default, stores, names, None
        self.env = env
        self.file_problems = missing
        for m in missing:
            log.error("welcome attachment missing (left out of welcomes until fixed): %s", m)

    def _load(self, files: list[Path], env: jinja2.Environment):
        default, stores, names, missing = dict(DEFAULTS), {}, {}, []
        for f in files:
            # the calendar's own reader (YAML 1.2 scalars, line numbers, the schema): `attach_group_qr: no`
            # is the same mistake here as in `check`, not False
            parsed, problems = read(f)
            if parsed is None:
                raise ContentError(str(problems[0]))
            wrong = [p for p in problems if not p.warning and p.message.startswith("welcome")]
            if wrong:
                raise ContentError(str(wrong[0]))
            doc = parsed.data
            missing += self._missing_files(parsed, (doc.get("welcome") or {}) if isinstance(doc, dict) else {})
            welcome = doc.get("welcome") or {}
            if not isinstance(welcome, dict):
                raise ContentError(f"{f}: welcome: expected a mapping")
            unknown = set(welcome) - set(DEFAULTS)
            if unknown:
                raise ContentError(f"{f}: welcome: unknown key(s) {', '.join(sorted(unknown))}")
            if f.parent.name == "stores":
                stores[f.stem] = welcome
            else:
                default.update(welcome)
                names.update({str(k): str(v) for k, v in (doc.get("clerk_names") or {}).items()})
        for where, code, spec in [("default.yaml", "SZ001", default),
                                  *((f"stores/{c}.yaml", c, {**default, **s}) for c, s in stores.items())]:
            self._try_render(env, self.dir / where, spec, {**SAMPLE, "store": {"code": code, "name": "示例门店"},
                                                      "benefit": str(spec.get("benefit") or "")})
        return default, stores, names, missing

    def _missing_files(self, parsed, welcome: dict) -> list[str]:
        """The attachments whose file is not inside the calendar folder, as file:line for `check`. One
        store's typo must not cost every store its welcome, so the content still loads (the send leaves
        the attachment out)."""
        missing = []
        attachments = welcome.get("attachments") if isinstance(welcome, dict) else None
        for i, att in enumerate(attachments if isinstance(attachments, list) else []):
            if not isinstance(att, dict) or len(att) != 1:
                continue
            (kind, value), = att.items()
            rel = value if kind in ("image", "video", "file") else (value or {}).get("pic") if kind == "miniprogram" \
                else None
            if not isinstance(rel, str):
                continue
            try:
                ok = attachment_path(self.dir, rel).is_file()
            except ValueError:
                ok = False
            if not ok:
                missing.append(f"{parsed.path}:{parsed.line(('welcome', 'attachments', i))}: welcome attachment "
                               f"{rel!r}: no such file in {self.dir}")
        return missing

    def _try_render(self, env: jinja2.Environment, yaml_file: Path, spec: dict[str, Any], ctx: dict[str, Any]) -> None:
        """Render with sample values, so a template that fails (a misspelt name, or one reaching for
        Python internals, which the sandbox refuses) is told by `check` as file:line, not found by a customer."""
        name = spec.get("template", BUILTIN_TEMPLATE)
        try:
            render(compile_template(env, name=name), ctx)
        except jinja2.TemplateNotFound as e:
            raise ContentError(f"{yaml_file}:{_template_key_line(yaml_file)}: welcome.template {name!r}: template "
                               f"file {e.name!r} not found in {self.dir / 'templates'}") from None
        except jinja2.TemplateError as e:
            line = getattr(e, "lineno", None) or 1
            tpl_file = getattr(e, "filename", None) or self.dir / "templates" / name
            raise ContentError(f"{tpl_file}:{line}: welcome template {name!r} (of {yaml_file.name}) does not "
                               f"render: {e}") from None

    def spec_for(self, store_code: str) -> WelcomeSpec:
        merged = {**self._default, **self._stores.get(store_code, {})}
        return WelcomeSpec(merged["template"], str(merged["benefit"] or ""), bool(merged["attach_group_qr"]),
                           list(merged["attachments"] or []))

    def clerk_name(self, userid: str) -> str:
        """The clerk's display name from `clerk_names` (what customers call them), else the userid."""
        return self._clerk_names.get(userid, userid)

    def render(self, *, store_code: str, store_name: str, clerk: str, store_benefit: str | None = None
               ) -> RenderedWelcome:
        # No reload here: the scheduler's tick reloads (bot.scheduler.reload_calendar), so a welcome's
        # 20 seconds are not spent globbing and stat-ing the calendar.
        spec = self.spec_for(store_code)
        ctx = {"store": {"code": store_code, "name": store_name}, "clerk": clerk,
               "clerk_name": self._clerk_names.get(clerk, clerk), "benefit": store_benefit or spec.benefit}
        try:
            text = render(compile_template(self.env, name=spec.template), ctx)
        except jinja2.TemplateError as e:
            # A welcome still goes out inside its 20 s: fall back to the built-in wording.
            log.error("welcome template %s failed for %s (%s); using the built-in one", spec.template, store_code, e)
            text = render(self.env.get_template(BUILTIN_TEMPLATE), ctx)
        extra_room = MAX_ATTACHMENTS - (1 if spec.attach_group_qr else 0)
        return RenderedWelcome(truncate_utf8(text.strip(), MAX_TEXT_BYTES), spec.attach_group_qr,
                               spec.attachments[:extra_room])

    def attachment_path(self, relative: str) -> Path:
        try:
            return attachment_path(self.dir, relative)
        except ValueError as e:
            raise ContentError(str(e)) from None


def _template_key_line(yaml_file: Path) -> int:
    f, _ = read(yaml_file)
    return f.line(("welcome", "template")) if f else 1
