"""Calendar and welcome templates are written by ops editors, who are not trusted with the bot: every
template renders in Jinja2's ImmutableSandboxedEnvironment, sees its context and nothing else, and a
template that reaches further is a template error (`check` exits 1 with file:line; serve keeps the
last good calendar; a welcome falls back to the built-in wording)."""

from datetime import date
from pathlib import Path
import shutil

import jinja2
import pytest

from bot.calendar.calendar import ContentCalendar
from bot.calendar.files import render, template_env
from bot.cli import main
from bot.welcome.content import WelcomeContent

ROOT = Path(__file__).resolve().parents[2]
SLOTS = ["10:00", "12:00", "16:00", "20:00"]
SECRET = "corp-secret-9f2c"   # in the environment and in config.yaml: no template may print it

# {M} becomes a marker file's path: a payload that escaped the sandbox would create it.
RCE = [
    "{{ lipsum.__globals__.os.popen('touch {M}').read() }}",
    "{{ lipsum.__globals__['__builtins__']['__import__']('os').system('touch {M}') }}",
    "{{ lipsum|attr('__globals__') }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {M}').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('touch {M}').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('touch {M}').read() }}",
    "{{ range.__init__ }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch {M}').read() }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('touch {M}').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
    "{{ c(['touch', '{M}']) }}{% endif %}{% endfor %}",
    "{{ store.__class__.__mro__ }}",
    "{{ store|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ chains|map(attribute='__class__')|list }}",
    "{{ '{0.__class__.__mro__}'.format(store) }}",
    "{{ date.__class__.__init__ }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('touch {M}').read() }}",
    "{{ config }}", "{{ settings }}", "{{ os }}", "{{ os.environ }}", "{{ environ }}", "{{ request }}",
    "{{ self }}", "{{ lipsum }}", "{{ cycler }}", "{{ dict(a=1) }}", "{{ range(3)|list }}",
    "{% for x in chains %}{{ loop.cycle.__globals__ }}{% endfor %}",
    "{% for x in chains %}{{ loop }}{% endfor %}",
    "{{ store.items }}",                                   # a bound method is no message text
    "{{ store.update({'name': 'x'}) }}{{ store.name }}",   # immutable: the next group's render shares it
    "{{ chains.append(1) }}",
    "{{ 2 ** 100000 }}", "{{ ((2 ** 64) ** 64) ** 64 }}", "{{ 'x' * 10 ** 8 }}",   # no frozen scheduler
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
]

READ = [   # nothing outside the template context: no file, no setting, no variable
    "{% include '/etc/passwd' %}",
    "{% include '../config.yaml' %}",
    "{% include '../../config.yaml' %}",
    "{% include 'leak.j2' %}",                 # a committed symlink to ../config.yaml
    "{% include 'chain.html' %}",              # the bot's own page templates are not ops templates
    "{% import '../config.yaml' as c %}{{ c }}",
    "{% extends '/etc/hostname' %}",
]


@pytest.fixture
def cal_dir(tmp_path, monkeypatch):
    d = tmp_path / "cal"
    shutil.copytree(ROOT / "content_calendar", d)
    (tmp_path / "config.yaml").write_text(f"secret: {SECRET}\n", encoding="utf-8")
    (d / "templates" / "leak.j2").symlink_to(tmp_path / "config.yaml")
    monkeypatch.setenv("WECOM_BOT_WECOM__SECRET", SECRET)
    return d


def ctx() -> dict:
    return ContentCalendar(ROOT / "content_calendar", slots=SLOTS).sample_context()


def marker(tmp_path: Path, payload: str) -> tuple[str, Path]:
    m = tmp_path / "PWNED"
    return payload.replace("{M}", str(m)), m


def test_the_payloads_are_real_outside_the_sandbox(tmp_path):
    """The lipsum payload does run code in a plain Environment (what files.py built before)."""
    text, m = marker(tmp_path, RCE[0])
    jinja2.Environment().from_string(text).render()
    assert m.exists()


@pytest.mark.parametrize("payload", RCE + READ)
def test_each_payload_is_a_template_error_with_no_side_effect(tmp_path, cal_dir, payload):
    env = template_env(cal_dir)
    text, m = marker(tmp_path, payload)
    context = ctx()
    with pytest.raises(jinja2.TemplateError) as e:
        render(env.from_string(text), context)
    assert not m.exists()
    assert SECRET not in str(e.value)
    assert e.value.lineno == 1                      # check can point at the line
    assert context["store"]["name"] == "示例门店" and len(context["chains"]) == 1   # context unchanged


@pytest.mark.parametrize("payload", [RCE[0], RCE[7], RCE[9], READ[2], READ[3], "{{ os.environ }}"])
def test_check_reports_a_payload_in_a_calendar_text_as_file_line_and_exits_1(tmp_path, cal_dir, capsys, payload):
    text, m = marker(tmp_path, payload)
    store = cal_dir / "stores" / "SZ002.yaml"
    store.write_text('week:\n  mon:\n    "10:00":\n      kind: qa\n      text: |\n        早上好\n        '
                     + text + "\n", encoding="utf-8")
    assert main(["--config", str(_config(tmp_path, cal_dir)), "check"]) == 1
    out = capsys.readouterr()
    assert any(line.startswith(f"{store}:7: text does not render") or line.startswith(f"{store}:7: template file")
               for line in out.err.splitlines()), out.err
    assert not m.exists() and SECRET not in out.out + out.err


def test_check_reports_a_payload_in_a_template_file_and_a_partial(tmp_path, cal_dir, capsys):
    text, m = marker(tmp_path, RCE[3])
    (cal_dir / "templates" / "evil.j2").write_text("第一行\n" + text + "\n", encoding="utf-8")
    (cal_dir / "templates" / "partials" / "chains.j2").write_text("{{ self._TemplateReference__context }}\n",
                                                                  encoding="utf-8")
    store = cal_dir / "stores" / "SZ002.yaml"
    store.write_text('week:\n  mon:\n    "16:00": {kind: qa, template: evil.j2}\n', encoding="utf-8")
    assert main(["--config", str(_config(tmp_path, cal_dir)), "check"]) == 1
    err = capsys.readouterr().err
    assert f"{store}:3: template 'evil.j2' does not render (evil.j2, line 2): access to attribute '__init__'" in err
    assert "(partials/chains.j2, line 1): access to attribute '_TemplateReference__context'" in err
    assert not m.exists()


def test_check_reports_a_payload_in_the_welcome_template(tmp_path, cal_dir, capsys):
    text, m = marker(tmp_path, RCE[1])
    welcome = cal_dir / "templates" / "welcome.j2"
    welcome.write_text("您好！\n" + text + "\n", encoding="utf-8")
    assert main(["--config", str(_config(tmp_path, cal_dir)), "check"]) == 1
    err = capsys.readouterr().err
    assert f"{welcome}:2: welcome template 'welcome.j2' (of default.yaml) does not render" in err
    assert not m.exists()


def test_serve_keeps_the_last_good_calendar_when_a_payload_arrives(tmp_path, cal_dir):
    cal = ContentCalendar(cal_dir, slots=SLOTS, store_codes=["SZ001", "SZ002"], log_problems=False)
    monday = date(2026, 11, 23)
    before = cal.day("SZ002", monday)
    text, m = marker(tmp_path, RCE[0])
    (cal_dir / "stores" / "SZ002.yaml").write_text(f'week:\n  mon:\n    "10:00": {{kind: qa, text: "{text}"}}\n',
                                                   encoding="utf-8")
    assert cal.reload_if_changed() is False
    assert cal.problems and "'lipsum' is undefined" in str(cal.problems[0])
    assert cal.day("SZ002", monday) == before and not m.exists()


def test_a_payload_that_only_fires_live_fails_closed(tmp_path, cal_dir):
    """A payload behind a condition the sample context does not meet passes check; live, the sandbox
    still refuses it (an error for the slot, no code run)."""
    text, m = marker(tmp_path, RCE[0])
    (cal_dir / "stores" / "SZ002.yaml").write_text(
        'week:\n  mon:\n    "10:00":\n      kind: qa\n      text: "{% if store.name == \'真\' %}' + text.replace('"', '\\"')
        + '{% endif %}hi"\n', encoding="utf-8")
    cal = ContentCalendar(cal_dir, slots=SLOTS, store_codes=["SZ001", "SZ002"], log_problems=False)
    assert cal.problems == []
    entry = cal.day("SZ002", date(2026, 11, 23))["10:00"]
    live = cal.context(store={"code": "SZ002", "name": "真", "benefit": ""}, clerk="u", day=date(2026, 11, 23),
                       slot="10:00")
    with pytest.raises(jinja2.TemplateError):
        cal.render(entry, live)
    assert not m.exists()


def test_a_welcome_payload_falls_back_to_the_builtin_wording(tmp_path, cal_dir):
    content = WelcomeContent(cal_dir)
    text, m = marker(tmp_path, RCE[0])
    (cal_dir / "templates" / "welcome.j2").write_text("{% if store.code == 'LIVE' %}" + text + "{% endif %}好",
                                                      encoding="utf-8")
    w = content.render(store_code="LIVE", store_name="深圳店", clerk="zhangsan")
    assert "深圳店" in w.text and "长按识别" in w.text and not m.exists()


def test_what_ops_templates_do_still_works(cal_dir):
    env = template_env(cal_dir)
    text = ("{{ store.name|upper }} {{ date.month }}月{{ date.day }}日 {{ date.strftime('%m-%d') }} "
            "{% for c in chains %}{{ loop.index }}.{{ c.title }} {{ '%.1f'|format(c.price|float) }}{% endfor %} "
            "{{ (store.benefit or '无') ~ '!' }} {{ 'x' * 3 }} {{ 2 ** 10 }} {{ chains|length }} "
            "{% set n = 2 %}{{ n * 3 }} {% include 'partials/chains.j2' %}")
    out = render(env.from_string(text), ctx())
    assert out.startswith("示例门店 11月27日 11-27 1.阳光玫瑰葡萄（示例） 39.9 入群领5元券! xxx 1024 1 6 ")
    assert "示例门店正在团购" in out


def test_the_shipped_calendar_renders_as_it_did_before_the_sandbox():
    """Every shipped entry and welcome, for several stores and days, renders to the same text in the
    sandbox as in a plain Environment with the same options."""
    cal = ContentCalendar(ROOT / "content_calendar", slots=SLOTS, store_codes=["SZ001", "SZ002"])
    assert cal.problems == []
    plain = jinja2.Environment(loader=jinja2.ChoiceLoader([
        jinja2.FileSystemLoader(ROOT / "content_calendar" / "templates"), jinja2.PackageLoader("bot", "templates")]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    chains = [{"id": 1, "title": "葡萄", "price": "39.90", "stock_left": 3, "stock_total": 5, "deadline": "周六",
               "link": "https://x/c/1"}]
    seen = 0
    for code in ("SZ001", "SZ002", "BJ001"):
        for i in range(7):
            day = date(2026, 11, 23 + i)
            for slot, entry in cal.day(code, day).items():
                for cs in ([], chains):
                    c = cal.context(store={"code": code, "name": "店", "benefit": ""}, clerk="lisi", day=day, slot=slot,
                                    chains=cs)
                    tpl = plain.get_template(entry.template) if entry.text is None else plain.from_string(entry.text)
                    assert cal.render(entry, c).text == tpl.render(**c).strip()
                    seen += 1
    assert seen > 100
    content = WelcomeContent(ROOT / "content_calendar")
    assert content.last_error is None
    for code in ("SZ001", "SZ002"):
        w = content.render(store_code=code, store_name="店", clerk="lisi")
        spec = content.spec_for(code)
        want = plain.get_template(spec.template).render(store={"code": code, "name": "店"}, clerk="lisi",
                                                         clerk_name="小李", benefit=spec.benefit)
        assert w.text == want.strip()


def _config(tmp_path: Path, cal_dir: Path) -> Path:
    p = tmp_path / "bot.yaml"
    p.write_text(f"""
calendar_dir: {cal_dir}
wecom:
  corp_id: ww1
  agent_id: 1000002
  secret: {SECRET}
  token: tok
  encoding_aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
broadcast:
  slots: ["10:00", "12:00", "16:00", "20:00"]
stores:
  - {{code: SZ001, name: 深圳科技园店, clerks: [zhangsan]}}
  - {{code: SZ002, name: 深圳海岸城店, clerks: [lisi]}}
""", encoding="utf-8")
    return p


def test_a_template_too_deep_for_the_parser_is_a_template_error_not_a_crash(tmp_path):
    """Jinja's parser raises RecursionError on `{{ ((((1)))) }}` two hundred deep: outside the sandbox's
    render, that used to crash `check` with a traceback and keep `serve` from starting."""
    import shutil

    from bot.calendar.calendar import ContentCalendar
    from bot.welcome.content import WelcomeContent

    cal_dir = tmp_path / "content_calendar"
    shutil.copytree(ROOT / "content_calendar", cal_dir)
    deep = "{{ " + "(" * 200 + "1" + ")" * 200 + " }}"
    (cal_dir / "stores" / "SZ002.yaml").write_text(f'week:\n  mon:\n    "10:00": {{kind: qa, text: "{deep}"}}\n',
                                                   encoding="utf-8")
    cal = ContentCalendar(cal_dir, slots=["10:00", "12:00", "16:00", "20:00"], store_codes=["SZ001", "SZ002"],
                          log_problems=False)
    assert any("SZ002.yaml:3" in str(p) and "cannot compile" in str(p) for p in cal.problems)
    (cal_dir / "templates" / "welcome.j2").write_text(deep, encoding="utf-8")
    content = WelcomeContent(cal_dir)
    assert content.last_error and "welcome.j2:1" in content.last_error
    assert "欢迎" in content.render(store_code="SZ001", store_name="店", clerk="u").text   # the built-in wording
