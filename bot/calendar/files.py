"""Reading calendar files: YAML with the line of every key, checked against content_calendar/schema.json,
so each problem can be told as `file:line: message` (what editors and `wecom-bot check` show)."""

from __future__ import annotations

import json
import re
import traceback
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

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


BUILTIN_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"   # builtin_*.j2 beside the page templates
MAX_REPEAT = 100_000     # characters or items a `*` may build; a message is at most 4,000 bytes anyway
MAX_EXPONENT = 64
MAX_BITS = 4096          # an integer result of `**`; nested powers grow past any CPU otherwise


class ConfinedLoader(jinja2.FileSystemLoader):
    """Template files under one folder, symlinks followed before deciding: `{% include "/etc/passwd" %}`,
    `../../config.yaml` or a committed symlink to either is "not found", never read."""

    def __init__(self, root: Path, suffix: str = ""):
        self.root = Path(root).resolve()
        self.suffix = suffix  # the built-in folder also holds our HTML pages: only its *.j2 are ops templates
        super().__init__(self.root)

    def get_source(self, environment: jinja2.Environment, template: str):
        path = self.root.joinpath(*jinja2.loaders.split_template_path(template)).resolve()  # refuses '..'
        if not template.endswith(self.suffix) or not path.is_relative_to(self.root) or not path.is_file():
            raise jinja2.TemplateNotFound(template)
        return super().get_source(environment, template)

    def list_templates(self) -> list[str]:
        return [t for t in super().list_templates() if t.endswith(self.suffix)]


def _shown(value: Any) -> Any:
    """What `{{ }}` may print: data. A function, macro, `self`, `loop` or other object is refused, so a
    template cannot put the insides of the bot into a group message even by its repr."""
    if isinstance(value, jinja2.Undefined) or _is_data(value):
        return value  # an Undefined raises its own error when printed
    raise SecurityError(f"a {type(value).__name__} cannot be shown in a message")


def _is_data(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, Decimal, date, time)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(_is_data(k) and _is_data(v) for k, v in value.items())
    return False


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Where every ops-written template renders (calendar texts and files, welcomes). Calendar editors are
    not trusted with the bot: the sandbox refuses Python internals (`__globals__`, `__class__`, `mro`,
    `_private`, `str.format` on them), the immutable variant keeps a template from changing the
    context that the next group's render shares, and Jinja's own globals (lipsum, cycler, joiner,
    namespace, dict, range) are gone: a template sees its context and nothing else. `**` and `*` are
    bounded, so `{{ 9 ** 999999 }}` is an error, not a frozen scheduler (Jinja folds constants at
    compile time unless the operator is intercepted)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, loader: jinja2.BaseLoader):
        super().__init__(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
                         lstrip_blocks=True, auto_reload=False, finalize=_shown)
        self.globals.clear()

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) and (
                abs(right) > MAX_EXPONENT or isinstance(left, int) and left.bit_length() * abs(right) > MAX_BITS):
            raise SecurityError(f"{left} ** {right} is too large to compute in a template")
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                raise SecurityError(f"repeating builds {len(seq) * n} items (at most {MAX_REPEAT})")
        return super().call_binop(context, operator, left, right)


def template_env(calendar_dir: Path) -> TemplateSandbox:
    """Templates for the calendar and the welcome: the calendar's `templates/`, then the built-in
    ones. Strict: a misspelt variable is an error `check` reports, not an empty string in a group.
    No auto-reload: an edited partial reaches live renders only with the calendar that was checked
    with it (each accepted reload builds a fresh environment)."""
    return TemplateSandbox(jinja2.ChoiceLoader([ConfinedLoader(Path(calendar_dir) / "templates"),
                                                ConfinedLoader(BUILTIN_TEMPLATES, suffix=".j2")]))


def compile_template(env: jinja2.Environment, *, name: str | None = None, source: str | None = None
                     ) -> jinja2.Template:
    """Load a template file (`name`) or compile calendar text (`source`). Jinja's parser can raise what is
    not a TemplateError (a RecursionError on `{{ ((((…)))) }}` a hundred deep): that too is a template
    error here, so `check` names it and `serve` keeps the last good calendar."""
    try:
        return env.get_template(name) if name is not None else env.from_string(source or "")
    except jinja2.TemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised as a template error, not swallowed
        raise jinja2.TemplateSyntaxError(f"cannot compile ({type(e).__name__})", 1, name) from e


def render(template: jinja2.Template, ctx: dict[str, Any]) -> str:
    """Render an ops template. Whatever it raises leaves as a TemplateError (a template can divide by
    zero or recurse as well as misspell), carrying `filename` and `lineno` of the template line that
    failed, so callers keep one except clause and `check` can say `file:line`."""
    try:
        return template.render(ctx)
    except Exception as e:  # noqa: BLE001 - re-raised as a template error, not swallowed
        err = e if isinstance(e, jinja2.TemplateError) else jinja2.TemplateRuntimeError(f"{type(e).__name__}: {e}")
        if getattr(err, "lineno", None) is None:
            where = [(f.f_code.co_filename, line) for f, line in traceback.walk_tb(e.__traceback__)
                     if "__jinja_exception__" in f.f_globals]   # Jinja's frames for template lines
            err.filename, err.lineno = where[-1] if where else (None, None)
        if err is e:
            raise
        raise err from e


def attachment_path(calendar_dir: Path, relative: str) -> Path:
    """An attachment named in the calendar or the welcome, resolved inside the calendar's folder (links
    followed first): `../../config.yaml` or an absolute path is refused, not read."""
    base = Path(calendar_dir).resolve()
    path = (base / relative).resolve()
    if base not in path.parents:
        raise ValueError(f"attachment {relative!r} is outside {calendar_dir}")
    return path
