"""What a welcome says: ops edit it under content_calendar/ (default.yaml `welcome:`, per store in
stores/<CODE>.yaml, templates in templates/). Reloaded when the files change; a broken edit is
logged and the last good content keeps running, so no customer misses a welcome over a typo."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from bot.calendar.files import template_env
from bot.text import truncate_utf8

log = logging.getLogger(__name__)

MAX_TEXT_BYTES = 4000
MAX_ATTACHMENTS = 9
BUILTIN_TEMPLATE = "builtin_welcome.j2"
DEFAULTS: dict[str, Any] = {"template": BUILTIN_TEMPLATE, "benefit": "", "attach_group_qr": True, "attachments": []}


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
        self.reload_if_changed()

    def _files(self) -> list[Path]:
        files = [self.dir / "default.yaml"] + sorted((self.dir / "stores").glob("*.yaml"))
        return [f for f in files if f.exists()]

    def reload_if_changed(self) -> None:
        files = self._files()
        stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            default, stores, names = self._load(files)
        except ContentError as e:
            self.last_error = str(e)
            log.error("welcome content not reloaded, the last good one stays: %s", e)
            return
        self._default, self._stores, self._clerk_names, self.last_error = default, stores, names, None

    def _load(self, files: list[Path]):
        default, stores, names = dict(DEFAULTS), {}, {}
        for f in files:
            try:
                doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                raise ContentError(f"{f}:{mark.line + 1 if mark else 1}: invalid YAML: {getattr(e, 'problem', e)}")
            if not isinstance(doc, dict):
                raise ContentError(f"{f}:1: expected a mapping")
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
        for where, spec in [("default.yaml", default), *((f"stores/{c}.yaml", s) for c, s in stores.items())]:
            if "template" in spec:
                try:
                    self.env.get_template(spec["template"])
                except jinja2.TemplateError as e:
                    raise ContentError(f"{self.dir / where}: welcome.template {spec['template']!r}: {e}")
        return default, stores, names

    def spec_for(self, store_code: str) -> WelcomeSpec:
        merged = {**self._default, **self._stores.get(store_code, {})}
        return WelcomeSpec(merged["template"], str(merged["benefit"] or ""), bool(merged["attach_group_qr"]),
                           list(merged["attachments"] or []))

    def render(self, *, store_code: str, store_name: str, clerk: str, store_benefit: str | None = None
               ) -> RenderedWelcome:
        self.reload_if_changed()
        spec = self.spec_for(store_code)
        ctx = {"store": {"code": store_code, "name": store_name}, "clerk": clerk,
               "clerk_name": self._clerk_names.get(clerk, clerk), "benefit": store_benefit or spec.benefit}
        try:
            text = self.env.get_template(spec.template).render(**ctx)
        except jinja2.TemplateError as e:
            # A welcome still goes out inside its 20 s: fall back to the built-in wording.
            log.error("welcome template %s failed for %s (%s); using the built-in one", spec.template, store_code, e)
            text = self.env.get_template(BUILTIN_TEMPLATE).render(**ctx)
        extra_room = MAX_ATTACHMENTS - (1 if spec.attach_group_qr else 0)
        return RenderedWelcome(truncate_utf8(text.strip(), MAX_TEXT_BYTES), spec.attach_group_qr,
                               spec.attachments[:extra_room])

    def attachment_path(self, relative: str) -> Path:
        path = (self.dir / relative).resolve()
        if self.dir.resolve() not in path.parents:
            raise ContentError(f"attachment {relative!r} is outside {self.dir}")
        return path
