"""Reading calendar files: YAML with the line of every key, checked against content_calendar/schema.json,
so each problem can be told as `file:line: message` (what editors and `wecom-bot check` show)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import yaml

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    message: str
    warning: bool = False   # told by `check`, but does not stop the calendar from loading

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: " + ("warning: " if self.warning else "") + self.message


@dataclass
class CalendarFile:
    path: Path
    data: dict
    lines: dict[Path_, int]
    value_lines: dict[Path_, int] = None  # the first line of a scalar's text (the line after `|`)

    def line(self, path: Path_) -> int:
        """The line of the deepest key of `path` that exists (1 when none)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1

    def problem(self, path: Path_, message: str, warning: bool = False) -> Problem:
        return Problem(self.path, self.line(path), message, warning)


class CalendarLoader(yaml.SafeLoader):
    """YAML 1.2 readings where 1.1 surprises editors: `off`/`no`/`on`/`yes` stay words (only true and
    false are booleans) and 10:00 stays a time, not the sexagesimal int 600."""


CalendarLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                                                            "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
CalendarLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                     list("tTfF"))
CalendarLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                     list("-+0123456789"))
CalendarLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                     re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
                                     list("-+0123456789."))


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            lines[path + (key,)] = k.start_mark.line + 1
            if isinstance(v, yaml.ScalarNode):
                block = v.style in ("|", ">")
                lines[("\0value",) + path + (key,)] = v.start_mark.line + (2 if block else 1)
            _walk(v, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines)


def _stringify_keys(obj: Any) -> Any:
    """An unquoted 2026-11-27 reads as a date: keys are text here, as the schema expects."""
    if isinstance(obj, dict):
        return {str(k): _stringify_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_stringify_keys(v) for v in obj]
    return obj


def read(path: Path) -> tuple[CalendarFile | None, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return None, [Problem(path, 1, f"cannot read: {e}")]
    try:
        node = yaml.compose(text, Loader=CalendarLoader)
        data = yaml.load(text, Loader=CalendarLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return None, [Problem(path, mark.line + 1 if mark else 1, f"invalid YAML: {getattr(e, 'problem', None) or e}")]
    if data is None:
        data, node = {}, None
    if not isinstance(data, dict):
        return None, [Problem(path, 1, "the top level must be a mapping (welcome:, week:, dates:, …)")]
    lines: dict[Path_, int] = {}
    if node is not None:
        _walk(node, (), lines)
        lines = {tuple(_key_text(p) for p in k): v for k, v in lines.items()}
    values = {k[1:]: v for k, v in lines.items() if k and k[0] == "\0value"}
    lines = {k: v for k, v in lines.items() if not (k and k[0] == "\0value")}
    f = CalendarFile(path, _stringify_keys(data), lines, values)
    return f, schema_problems(f)


def _key_text(k: Any) -> Any:
    return k if isinstance(k, int) else str(k)


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "content_calendar" / "schema.json"


@cache
def schema() -> dict:
    """The one schema, shipped beside the calendar for editors; `check` validates with the same file."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def _leaf(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """Descend anyOf/oneOf to the branch that explains the failure (an entry, not "entry or null")."""
    while err.validator in ("anyOf", "oneOf") and err.context:
        if isinstance(err.instance, dict) and "kind" in err.instance and all(
                e.validator == "required" for e in err.context):
            return err  # neither text nor template: told as such below
        branches = [e for e in err.context if e.validator != "type"] or list(err.context)
        if isinstance(err.instance, dict) and len(err.instance) == 1 and all(
                e.validator in ("additionalProperties", "required") for e in branches):
            return err  # an attachment of no known shape: told as such below
        err = jsonschema.exceptions.best_match(branches)
    return err


def schema_problems(f: CalendarFile) -> list[Problem]:
    problems = []
    for top in _validator().iter_errors(f.data):
        err = _leaf(top)
        path = tuple(err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = set(err.schema.get("properties", {}))
            extra = [k for k in err.instance if k not in known]
            if extra:
                path, message = path + (extra[0],), f"unknown key {extra[0]!r}" + (
                    f" (expected one of: {', '.join(sorted(known))})" if known else "")
        elif "propertyNames" in err.absolute_schema_path:
            path = path + (err.instance,)
            message = f"{err.instance!r}: " + _name_hint(err)
        elif err.validator == "oneOf" and isinstance(err.instance, dict) and "kind" in err.instance:
            has = [k for k in ("text", "template") if k in err.instance]
            message = "an entry needs exactly one of text or template" + (f" (has {' and '.join(has)})" if has else "")
        elif err.validator == "oneOf" and isinstance(err.instance, dict):
            message = ("an attachment is one of image, video, file (a path), link {title, url} or "
                       f"miniprogram {{title, appid, page, pic}}; got {', '.join(map(str, err.instance)) or 'nothing'}")
        elif err.validator == "enum":
            message = f"{err.instance!r} is not one of: {', '.join(map(str, err.validator_value))}"
        elif err.validator == "maxItems":
            message = f"{len(err.instance)} items; at most {err.validator_value}"
        where = " → ".join(map(str, path))
        problems.append(f.problem(path, f"{where}: {message}" if where else message))
    return sorted(problems, key=lambda p: p.line)


def _name_hint(err: jsonschema.ValidationError) -> str:
    if err.validator == "enum":
        return "not a weekday (mon … sun, daily, 周一 … 周日, 每天)"
    if ":" in str(err.schema.get("pattern", "")):
        return "not a slot time HH:MM (quote it: \"10:00\")"
    if err.validator == "pattern":
        return "not a date YYYY-MM-DD"
    return err.message


def template_env(calendar_dir: Path) -> jinja2.Environment:
    """Templates for the calendar and the welcome: the calendar's `templates/`, then the built-in
    ones. Strict: a misspelt variable is an error `check` reports, not an empty string in a group."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(Path(calendar_dir) / "templates"),
                                    jinja2.PackageLoader("bot", "templates")]),
        undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True,
        auto_reload=True)
