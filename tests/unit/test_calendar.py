"""The content calendar: precedence of overrides, every `check` error with its line, reloading."""

from datetime import date
from pathlib import Path
import shutil
import textwrap

import pytest

from bot.calendar.calendar import ContentCalendar
from bot.cli import main

ROOT = Path(__file__).resolve().parents[2]
SLOTS = ["10:00", "12:00", "16:00", "20:00"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def cal_dir(tmp_path):
    d = tmp_path / "cal"
    shutil.copytree(ROOT / "content_calendar", d)
    return d


def test_the_shipped_calendar_is_valid_and_covers_every_slot_every_day():
    cal = ContentCalendar(ROOT / "content_calendar", slots=SLOTS, store_codes=["SZ001", "SZ002"])
    assert cal.problems == []
    for i in range(7):
        assert set(cal.day("SZ002", date(2026, 11, 23 + i))) == set(SLOTS)


def test_precedence_store_over_region_over_chain_dates_over_weeks(tmp_path):
    d = tmp_path / "cal"
    write(d / "default.yaml", """
        week:
          daily:
            "10:00": {kind: benefit, text: chain daily}
            "12:00": {kind: story, text: chain daily noon}
          周一:
            "10:00": {kind: story, text: chain monday}
        dates:
          "2026-11-27":
            slots:
              "12:00": {kind: flash_sale, text: chain black friday}
          "2026-12-25": {off: true}
        regions:
          south:
            stores: ["SZ*"]
            week:
              daily:
                "16:00": {kind: qa, text: region daily}
              mon:
                "10:00": {kind: qa, text: region monday}
        """)
    write(d / "stores" / "SZ001.yaml", """
        week:
          mon:
            "12:00": null
          daily:
            "10:00": {kind: notice, text: store daily}
        dates:
          "2026-12-25":
            slots:
              "20:00": {kind: notice, text: store open on christmas}
        """)
    cal = ContentCalendar(d, slots=SLOTS, store_codes=["SZ001", "SZ002", "BJ001"])
    assert cal.problems == []
    text = lambda code, day: {s: e.text for s, e in cal.day(code, day).items()}
    monday, friday, xmas = date(2026, 11, 23), date(2026, 11, 27), date(2026, 12, 25)
    assert text("BJ001", monday) == {"10:00": "chain monday", "12:00": "chain daily noon"}   # 周一 over daily
    assert text("SZ002", monday) == {"10:00": "region monday", "12:00": "chain daily noon", "16:00": "region daily"}
    assert text("SZ001", monday) == {"10:00": "store daily", "16:00": "region daily"}        # null drops 12:00
    assert text("SZ001", friday)["12:00"] == "chain black friday"                             # a date beats any week
    assert text("SZ002", xmas) == {} and text("SZ001", xmas) == {"20:00": "store open on christmas"}
    assert cal.day("SZ001", monday)["10:00"].origin == "stores/SZ001.yaml:5"


CHECK_CASES = [
    # (file text, expected line, expected words)
    ("week:\n  monday:\n    \"10:00\": {kind: qa, text: x}\n", 2, "not a weekday"),
    ("week:\n  mon:\n    \"9:00\": {kind: qa, text: x}\n", 3, "not a slot time"),
    ("week:\n  mon:\n    \"11:00\": {kind: qa, text: x}\n", 3, "not a broadcast slot"),
    ("week:\n  mon:\n    \"10:00\": {kind: promo, text: x}\n", 3, "'promo' is not one of"),
    ("week:\n  mon:\n    \"10:00\": {kind: qa}\n", 3, "exactly one of text or template"),
    ("week:\n  mon:\n    \"10:00\":\n      kind: qa\n      text: x\n      colour: red\n", 6, "unknown key 'colour'"),
    ("week:\n  mon:\n    \"10:00\":\n      kind: qa\n      text: |\n        fine\n        {% if %}\n", 7,
     "does not render"),
    ("week:\n  mon:\n    \"10:00\": {kind: qa, text: \"{{ store.nam }}\"}\n", 3, "has no attribute 'nam'"),
    ("week:\n  mon:\n    \"10:00\": {kind: qa, template: nope.j2}\n", 3, "'nope.j2' not found"),
    ("week:\n  mon:\n    \"10:00\":\n      kind: qa\n      text: |\n        hi\n        {{ store.__class__ }}\n", 7,
     "access to attribute '__class__' of 'dict' object is unsafe"),                     # the sandbox
    ("week:\n  mon:\n    \"10:00\": {kind: qa, text: \"{{ lipsum }}\"}\n", 3, "'lipsum' is undefined"),
    ("week:\n  mon:\n    \"10:00\": {kind: qa, text: \"{% include '../../config.yaml' %}\"}\n", 3,
     "template file '../../config.yaml' not found"),
    ("week:\n  mon:\n    \"10:00\":\n      kind: qa\n      text: x\n      attachments:\n        - image: media/nope.png\n",
     7, "not found"),
    ("week:\n  mon:\n    \"10:00\":\n      kind: qa\n      text: x\n      attachments: [{sticker: a.png}]\n", 6,
     "an attachment is one of"),
    ("week:\n  mon:\n    \"10:00\": {kind: qa, text: \"{{ 'x' * 4001 }}\"}\n", 3, "4001 bytes"),
    ("week:\n  mon:\n    \"10:00\":\n      kind: qa\n      text: x\n      attachments:\n"
     + "".join("        - {link: {title: t, url: 'https://e.cn'}}\n" for _ in range(10)), 6, "10 items; at most 9"),
    ("week:\n  mon:\n    \"10:00\": [unclosed\n", 4, "invalid YAML"),
    ("dates:\n  \"2026-13\": {off: true}\n", 2, "not a date"),
]


@pytest.mark.parametrize("text,line,words", CHECK_CASES, ids=[c[2] for c in CHECK_CASES])
def test_check_reports_each_error_as_file_line_message_and_exits_1(tmp_path, cal_dir, capsys, text, line, words):
    target = cal_dir / "default.yaml" if text.startswith("regions") else cal_dir / "stores" / "SZ002.yaml"
    if target.name == "default.yaml":
        target.write_text(target.read_text(encoding="utf-8") + "\n" + text, encoding="utf-8")
        base = len((ROOT / "content_calendar" / "default.yaml").read_text(encoding="utf-8").splitlines()) + 1
        line += base
    else:
        target.write_text(text, encoding="utf-8")
    assert main(["--config", str(_config(tmp_path, cal_dir)), "check"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(e.startswith(f"{target}:{line}: ") and words in e for e in err), err


def test_a_store_file_or_region_for_no_configured_store_is_a_warning_not_a_stop(tmp_path, cal_dir, capsys):
    """A closed store's file left behind must not stop every other store's broadcasts."""
    write(cal_dir / "stores" / "XX999.yaml", "week: {}\n")
    with (cal_dir / "default.yaml").open("a", encoding="utf-8") as f:
        f.write("  north:\n    stores: [BJ*]\n")                      # under the shipped `regions:`
    assert main(["--config", str(_config(tmp_path, cal_dir)), "check"]) == 0
    err = capsys.readouterr().err
    assert f"{cal_dir / 'stores' / 'XX999.yaml'}:1: warning: no configured store has the code 'XX999'" in err
    assert "warning: region north: 'BJ*' matches no configured store" in err


def test_check_prints_the_week_grid_for_a_store(tmp_path, cal_dir, capsys):
    assert main(["--config", str(_config(tmp_path, cal_dir)), "check", "--store", "SZ001", "--week", "2026-11-27"]) == 0
    out = capsys.readouterr().out
    assert "week of 2026-11-23, store SZ001 深圳科技园店" in out
    friday = next(line for line in out.splitlines() if line.startswith("周五 11-27"))
    assert "限时秒杀* 黑五全天：深圳" in friday
    saturday = next(line for line in out.splitlines() if line.startswith("周六 11-28"))
    assert saturday.split()[4] == "—"                                    # SZ001 drops Saturday noon


def test_a_broken_edit_keeps_the_last_good_calendar(cal_dir):
    cal = ContentCalendar(cal_dir, slots=SLOTS, store_codes=["SZ001", "SZ002"])
    before = cal.day("SZ002", date(2026, 11, 23))
    (cal_dir / "default.yaml").write_text("week: [broken", encoding="utf-8")
    assert cal.reload_if_changed() is False
    assert cal.problems and "invalid YAML" in str(cal.problems[0])
    assert cal.day("SZ002", date(2026, 11, 23)) == before
    write(cal_dir / "default.yaml", """
        week:
          daily:
            "10:00": {kind: qa, text: fixed}
        """)
    assert cal.reload_if_changed() is True and cal.problems == []
    assert {s: e.text for s, e in cal.day("SZ002", date(2026, 11, 23)).items()} == {"10:00": "fixed"}


def test_the_schema_file_is_valid_json_schema():
    import json

    import jsonschema

    schema = json.loads((ROOT / "content_calendar" / "schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)


def _config(tmp_path: Path, cal_dir: Path) -> Path:
    return write(tmp_path / "config.yaml", f"""
        database_url: "sqlite:///{tmp_path / 'bot.db'}"
        calendar_dir: {cal_dir}
        wecom:
          corp_id: wwchecktest
          agent_id: 1000002
          secret: s
          token: t
          encoding_aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
        stores:
          - {{code: SZ001, name: 深圳科技园店, clerks: [zhangsan]}}
          - {{code: SZ002, name: 深圳海岸城店, clerks: [lisi, wangwu]}}
        """)


def test_a_broken_partial_reaches_no_live_render_until_a_calendar_checked_with_it_loads(cal_dir):
    """Jinja's auto_reload used to put an edited partial straight into live renders, past the check
    that refused the reload: the last good calendar must include the last good partial too."""
    import os
    import time

    write(cal_dir / "templates" / "partials" / "hello.j2", "你好 {{ store.name }}")
    write(cal_dir / "stores" / "SZ001.yaml", """
        week:
          mon:
            "10:00": {kind: qa, text: '{% include "partials/hello.j2" %}'}
        """)
    cal = ContentCalendar(cal_dir, slots=SLOTS, store_codes=["SZ001"], log_problems=False)
    assert not cal.problems
    monday = date(2026, 11, 23)
    ctx = cal.sample_context({"code": "SZ001", "name": "科技园店", "benefit": ""}, "zhangsan", day=monday, slot="10:00")
    entry = cal.day("SZ001", monday)["10:00"]
    assert cal.render(entry, ctx).text == "你好 科技园店"
    time.sleep(0.01)
    write(cal_dir / "templates" / "partials" / "hello.j2", "你好 {{ no_such_name }}")
    os.utime(cal_dir / "templates" / "partials" / "hello.j2", None)
    assert cal.reload_if_changed() is False and cal.problems
    assert cal.render(entry, ctx).text == "你好 科技园店"            # still the checked partial
    write(cal_dir / "templates" / "partials" / "hello.j2", "您好 {{ store.name }}")
    os.utime(cal_dir / "templates" / "partials" / "hello.j2", None)
    assert cal.reload_if_changed() is True
    assert cal.render(cal.day("SZ001", monday)["10:00"], ctx).text == "您好 科技园店"
