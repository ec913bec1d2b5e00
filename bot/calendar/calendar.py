"""The weekly broadcast plan: default.yaml's week and dates, regions, per-store files; resolved per
store and day, rendered with Jinja2. Reloaded when files change; a broken edit is reported and the
last good calendar keeps running."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import jinja2

from bot.calendar import files
from bot.calendar.files import CalendarFile, Problem, compile_template, read, render, template_env
from bot.text import truncate_utf8

log = logging.getLogger(__name__)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
KIND_ZH = {"benefit": "福利", "flash_sale": "限时秒杀", "story": "产品故事", "qa": "答疑", "chain": "团购",
           "notice": "通知"}
# Which slot wins the day's mass message when none is marked: money first.
KIND_PRIORITY = {"flash_sale": 80, "benefit": 60, "chain": 50, "story": 30, "qa": 20, "notice": 10}
MAX_TEXT_BYTES = 4000      # add_msg_template text.content
MAX_ATTACHMENTS = 9
MAX_FILE_BYTES = {"image": 10 << 20, "video": 10 << 20, "file": 20 << 20}


class CalendarError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    slot: str
    kind: str
    text: str | None
    template: str | None
    attachments: tuple[dict, ...]
    delivery: str              # auto | mass | reminder
    priority: int
    expires: str | None        # HH:MM the same day
    origin: str                # file:line, for check and the logs

    @property
    def kind_zh(self) -> str:
        return KIND_ZH.get(self.kind, self.kind)

    def mass_rank(self) -> tuple:
        """Sort key: the entry marked for the mass message, then priority, then the earlier slot."""
        return (self.delivery != "mass", -self.priority, self.slot)


@dataclass(frozen=True)
class Rendered:
    text: str
    attachments: tuple[dict, ...]


@dataclass
class _Layer:
    file: CalendarFile
    base: tuple          # path of this layer's week/dates in its file
    week: dict
    dates: dict


@dataclass
class Snapshot:
    """One loaded, valid calendar."""
    default: _Layer | None = None
    regions: list[tuple[str, list[str], _Layer]] = field(default_factory=list)
    stores: dict[str, _Layer] = field(default_factory=dict)
    clerk_names: dict[str, str] = field(default_factory=dict)
    _days: dict = field(default_factory=dict)   # (store, day) → plan: a slot for 25,000 groups asks often

    def layers_for(self, store_code: str) -> list[_Layer]:
        out = [self.default] if self.default else []
        out += [layer for _, pats, layer in self.regions if any(fnmatch.fnmatchcase(store_code, p) for p in pats)]
        if store_code in self.stores:
            out.append(self.stores[store_code])
        return out

    def day(self, store_code: str, day: date) -> dict[str, Entry]:
        """slot → entry for one store and day: weeks first (chain, regions, store; a weekday's own slot
        over `daily`), then dated overrides in the same order; `off` clears the day, null drops a slot."""
        key = (store_code, day)
        if key in self._days:
            return self._days[key]
        if len(self._days) > 50_000:
            self._days.clear()
        self._days[key] = plan = self._day(store_code, day)
        return plan

    def _day(self, store_code: str, day: date) -> dict[str, Entry]:
        layers = self.layers_for(store_code)
        plan: dict[str, Entry | None] = {}
        wd = WEEKDAYS[day.weekday()]
        keys = ("daily", "每天", wd, WEEKDAY_ZH[day.weekday()])  # a weekday's own slot wins over daily
        for layer in layers:
            for key in keys:
                for slot, raw in (layer.week.get(key) or {}).items():
                    plan[slot] = _entry(layer, layer.base + ("week", key, slot), slot, raw)
        iso = day.isoformat()
        for layer in layers:
            dated = layer.dates.get(iso)
            if not dated:
                continue
            if dated.get("off"):
                plan.clear()
            for slot, raw in (dated.get("slots") or {}).items():
                plan[slot] = _entry(layer, layer.base + ("dates", iso, "slots", slot), slot, raw)
        return {s: e for s, e in sorted(plan.items()) if e is not None}

    def every_entry(self) -> Iterable[tuple[_Layer, tuple, Entry]]:
        layers = ([self.default] if self.default else []) + [l for _, _, l in self.regions] + list(self.stores.values())
        for layer in layers:
            for wkey, day in layer.week.items():
                for slot, raw in (day or {}).items():
                    if raw is not None:
                        path = layer.base + ("week", wkey, slot)
                        yield layer, path, _entry(layer, path, slot, raw)
            for iso, dated in layer.dates.items():
                for slot, raw in ((dated or {}).get("slots") or {}).items():
                    if raw is not None:
                        path = layer.base + ("dates", iso, "slots", slot)
                        yield layer, path, _entry(layer, path, slot, raw)


def _entry(layer: _Layer, path: tuple, slot: str, raw: dict | None) -> Entry | None:
    if raw is None:
        return None
    return Entry(slot=slot, kind=raw["kind"], text=raw.get("text"), template=raw.get("template"),
                 attachments=tuple(raw.get("attachments") or ()), delivery=raw.get("delivery", "auto"),
                 priority=int(raw.get("priority", KIND_PRIORITY.get(raw["kind"], 0))), expires=raw.get("expires"),
                 origin=f"{layer.file.path.name if layer.file.path.parent.name != 'stores' else 'stores/' + layer.file.path.name}:{layer.file.line(path)}")


class ContentCalendar:
    """The live calendar of one content_calendar/ folder."""

    def __init__(self, calendar_dir: Path, *, slots: list[str], store_codes: Iterable[str] = (),
                 log_problems: bool = True):
        self.log_problems = log_problems
        self.dir = Path(calendar_dir)
        self.slots = list(slots)
        self.store_codes = set(store_codes)
        # the environment and its compiled texts, swapped together with each accepted reload
        self._templates: tuple[jinja2.Environment, dict[str, jinja2.Template]] = (template_env(self.dir), {})
        self.snapshot = Snapshot()
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []   # worth fixing, but the calendar still runs (a store file for a closed store)
        self._stamp: tuple = ()
        self.reload_if_changed()

    # -- loading ---------------------------------------------------------------------------
    def files(self) -> list[Path]:
        files = [self.dir / "default.yaml"] + sorted((self.dir / "stores").glob("*.yaml"))
        return [f for f in files if f.exists()]

    def _stamp_now(self) -> tuple:
        paths = self.files() + sorted((self.dir / "templates").rglob("*.j2"))
        return tuple((str(p), p.stat().st_mtime_ns) for p in paths if p.exists())

    def reload_if_changed(self) -> bool:
        """Reload when a file changed; True when a new calendar is live."""
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        templates = (template_env(self.dir), {})   # a fresh one: edited partials are read, and checked
        snap, problems = self.load(templates)
        self.problems = [p for p in problems if not p.warning]
        self.warnings = [p for p in problems if p.warning]
        problems = self.problems
        if problems:
            if self.log_problems:
                log.error("content calendar not reloaded, the last good one keeps running:\n%s",
                          "\n".join(map(str, problems)))
            return False
        self.snapshot, self._templates = snap, templates
        log.info("content calendar loaded (%d files)", len(self.files()))
        return True

    def load(self, templates=None) -> tuple[Snapshot, list[Problem]]:
        snap, problems = Snapshot(), []
        for path in self.files():
            f, ps = read(path)
            problems += ps
            if f is None or ps:
                continue
            if path.parent.name == "stores":
                for key in ("regions", "clerk_names"):
                    if key in f.data:
                        problems.append(f.problem((key,), f"{key} belongs in default.yaml, not in a store file"))
                if self.store_codes and path.stem not in self.store_codes:
                    problems.append(Problem(path, 1, f"no configured store has the code {path.stem!r}", warning=True))
                snap.stores[path.stem] = _Layer(f, (), f.data.get("week") or {}, f.data.get("dates") or {})
            else:
                snap.default = _Layer(f, (), f.data.get("week") or {}, f.data.get("dates") or {})
                snap.clerk_names = dict(f.data.get("clerk_names") or {})
                for name, region in (f.data.get("regions") or {}).items():
                    pats = list(region["stores"])
                    if self.store_codes:
                        for i, p in enumerate(pats):
                            if not any(fnmatch.fnmatchcase(c, p) for c in self.store_codes):
                                problems.append(f.problem(("regions", name, "stores", i),
                                                          f"region {name}: {p!r} matches no configured store",
                                                          warning=True))
                    snap.regions.append((name, pats, _Layer(f, ("regions", name), region.get("week") or {},
                                                            region.get("dates") or {})))
        if any(not p.warning for p in problems):
            return snap, problems
        problems += self._semantic_problems(snap, templates)
        return snap, problems

    def _semantic_problems(self, snap: Snapshot, templates=None) -> list[Problem]:
        problems = []
        sample = self.sample_context()
        for layer, path, entry in snap.every_entry():
            f = layer.file
            if entry.slot not in self.slots:
                problems.append(f.problem(path, f"slot {entry.slot} is not a broadcast slot "
                                                f"(broadcast.slots: {', '.join(self.slots)})"))
            for i, att in enumerate(entry.attachments):
                problems += self._attachment_problems(f, path + ("attachments", i), att)
            try:
                text = self._render_text(entry, sample, templates)
            except jinja2.TemplateError as e:
                problems.append(self._template_problem(f, path, entry, e))
                continue
            size = len(text.encode())
            if size > MAX_TEXT_BYTES:
                problems.append(f.problem(path + ("text",), f"text is {size} bytes rendered; WeCom takes at most "
                                                            f"{MAX_TEXT_BYTES}"))
            if not text.strip() and not entry.attachments:
                problems.append(f.problem(path, "the entry renders to nothing (no text, no attachments)"))
        return problems

    def _template_problem(self, f: CalendarFile, path: tuple, entry: Entry, e: jinja2.TemplateError) -> Problem:
        """file:line of a template error: the line inside the entry's text when it failed there, else the
        entry's key with the template file and line named (an included partial, a template file)."""
        lineno, filename = getattr(e, "lineno", None), getattr(e, "filename", None)
        in_text = entry.text is not None and filename in (None, "<template>")
        where = f" ({self._template_name(filename)}, line {lineno})" if lineno and not in_text else ""
        if isinstance(e, jinja2.TemplateNotFound):
            what = f"template file {e.name!r} not found in {self.dir / 'templates'}"
        elif entry.text is not None:
            what = f"text does not render{where}: {e}"
        else:
            what = f"template {entry.template!r} does not render{where}: {e}"
        if entry.text is None:
            return f.problem(path + ("template",), what)
        key = path + ("text",)
        first = (f.value_lines or {}).get(key, f.line(key))
        return Problem(f.path, first + (lineno - 1 if lineno and in_text else 0), what)

    def _template_name(self, filename: str | None) -> str:
        try:
            return str(Path(filename).resolve().relative_to((self.dir / "templates").resolve()))
        except (TypeError, ValueError):
            return Path(filename).name if filename else "?"

    def _attachment_problems(self, f: CalendarFile, path: tuple, att: dict) -> list[Problem]:
        (kind, value), = att.items()
        rel = value if kind in MAX_FILE_BYTES else (value.get("pic") if kind == "miniprogram" else None)
        if rel is None:
            return []
        try:
            p = self.attachment_path(rel)
        except CalendarError as e:
            return [f.problem(path, str(e))]
        if not p.is_file():
            return [f.problem(path, f"attachment file {rel!r} not found under {self.dir}")]
        limit = MAX_FILE_BYTES.get(kind, MAX_FILE_BYTES["image"])
        size = p.stat().st_size
        if size > limit or size <= 5:
            return [f.problem(path, f"attachment {rel!r} is {size} bytes; WeCom takes 6 to {limit} for {kind}")]
        return []

    def attachment_path(self, relative: str) -> Path:
        try:
            return files.attachment_path(self.dir, relative)
        except ValueError as e:
            raise CalendarError(str(e)) from None

    # -- using it --------------------------------------------------------------------------
    def day(self, store_code: str, day: date) -> dict[str, Entry]:
        plan = self.snapshot.day(store_code, day)
        return plan if all(s in self.slots for s in plan) else {s: e for s, e in plan.items() if s in self.slots}

    def clerk_name(self, userid: str) -> str:
        return self.snapshot.clerk_names.get(userid, userid)

    def context(self, *, store: dict, clerk: str, day: date, slot: str, chains: list[dict] | None = None,
                group: dict | None = None) -> dict[str, Any]:
        return {"store": store, "clerk": clerk, "clerk_name": self.clerk_name(clerk), "date": day,
                "date_zh": f"{day.month}月{day.day}日", "weekday": WEEKDAY_ZH[day.weekday()], "slot": slot,
                "chains": chains or [], "group": group}

    def sample_context(self, store: dict | None = None, clerk: str = "zhangsan", day: date | None = None,
                       slot: str = "10:00") -> dict[str, Any]:
        day = day or date(2026, 11, 27)
        chain = {"id": 1, "title": "阳光玫瑰葡萄（示例）", "price": "39.90", "stock_left": 120, "stock_total": 200,
                 "deadline": "11-28 18:00", "link": "https://example.invalid/c/sample"}
        return self.context(store=store or {"code": "SZ001", "name": "示例门店", "benefit": "入群领5元券"},
                            clerk=clerk, day=day, slot=slot, chains=[chain], group={"chat_id": "wr_sample",
                                                                                    "name": "示例门店福利群"})

    @property
    def env(self) -> jinja2.Environment:
        return self._templates[0]

    def _render_text(self, entry: Entry, ctx: dict, templates=None) -> str:
        env, compiled = templates or self._templates
        if entry.text is None:
            tpl = compile_template(env, name=entry.template)
        else:
            tpl = compiled.get(entry.text)
            if tpl is None:  # compiling costs a millisecond; a slot renders thousands of times
                tpl = compiled[entry.text] = compile_template(env, source=entry.text)
        return render(tpl, ctx).strip()

    def render(self, entry: Entry, ctx: dict) -> Rendered:
        """Text cut to WeCom's byte limit (check reports the overflow before it happens)."""
        return Rendered(truncate_utf8(self._render_text(entry, ctx), MAX_TEXT_BYTES),
                        entry.attachments[:MAX_ATTACHMENTS])

    def week_grid(self, store_code: str, monday: date, store: dict | None = None, clerk: str = "zhangsan") -> str:
        """The week's plan as text: weekday × slot → kind and the first line of the text."""
        rows = []
        width = 26
        head = "      " + "".join(f"{s:<{width}}" for s in self.slots)
        rows.append(head)
        for i in range(7):
            d = monday + timedelta(days=i)
            plan = self.day(store_code, d)
            cells = []
            for s in self.slots:
                e = plan.get(s)
                if e is None:
                    cells.append("—")
                    continue
                try:
                    first = self._render_text(e, self.sample_context(store, clerk, day=d, slot=s)).splitlines()[0:1]
                except jinja2.TemplateError:
                    first = ["(template error)"]
                mark = "*" if e.delivery == "mass" else ""
                cells.append(f"{e.kind_zh}{mark} {first[0] if first else ''}")
            rows.append(f"{WEEKDAY_ZH[i]} {d:%m-%d} " + "".join(_pad(c, width) for c in cells))
        return "\n".join(rows)


def _pad(text: str, width: int) -> str:
    """Pad to a display width (CJK characters take two columns), cutting what does not fit."""
    out, w = "", 0
    for ch in text:
        cw = 2 if ord(ch) > 0x2E80 else 1
        if w + cw > width - 2:
            out += "…"
            w += 1
            break
        out += ch
        w += cw
    return out + " " * max(1, width - w)
