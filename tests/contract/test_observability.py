"""Seen, not just logged (issue 12 item 8): /healthz says what is wrong, /metrics shows the backlog
and what gave up, log lines are structured. On both databases, over loopback HTTP."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, update

from bot.db.models import Event, Outbox, Welcome, WorkerProcess
from bot.health import retry_outbox
from bot.logs import JsonFormatter, KeyValueFormatter
from bot.messaging.heartbeat import Heartbeat, process_id
from bot.messaging.uow import UnitOfWork
from bot.scheduler import Lease
from bot.serving import free_port

ROOT = Path(__file__).resolve().parents[2]
ADD_KIND = "change_external_contact/add_external_contact"


def healthz(h, verbose: bool = False) -> httpx.Response:
    return httpx.get(f"{h.bot.url}/healthz", params={"verbose": 1} if verbose else None)


def metric(h, metric_name: str, /, **labels) -> float | None:
    """The value of one sample of the bot's /metrics (None when it is not there)."""
    for family in text_string_to_metric_families(httpx.get(f"{h.bot.url}/metrics").text):
        for sample in family.samples:
            if sample.name == metric_name and sample.labels == labels:
                return sample.value
    return None


def queue(h, kind: str, n: int) -> None:
    with UnitOfWork(h.c.sessions, h.clock) as uow:
        for i in range(n):
            uow.outbox.add(kind, f"obs:{kind}:{i}", {"touser": ["zhangsan"], "msgtype": "text",
                                                     "content": {"content": f"消息 {i}"}})
        uow.commit()


# -- /healthz ------------------------------------------------------------------------------------
def test_healthz_is_200_when_idle_with_no_workers_and_no_scheduler(harness):
    harness.clock.advance(600)                      # nothing due: an idle deployment does not flap
    assert healthz(harness).status_code == 200 and healthz(harness).json() == {"status": "ok"}
    body = healthz(harness, verbose=True).json()
    assert body["status"] == "ok" and body["reasons"] == []
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["workers"] == {"ok": True, "alive": 0, "due_over_a_minute": []}
    assert body["checks"]["scheduler"] == {"ok": True, "expected": False}


def _dead_url(db_url: str, tmp_path) -> str:
    if db_url.startswith("sqlite"):
        (tmp_path / "not-a-dir").write_text("")
        return f"sqlite:///{tmp_path / 'not-a-dir' / 'bot.db'}"   # cannot be opened
    return re.sub(r"@([^/:]+):\d+/", rf"@\1:{free_port()}/", db_url)   # nobody listens there


def test_healthz_is_503_when_the_database_is_unreachable(harness, db_url, tmp_path):
    dead = create_engine(_dead_url(db_url, tmp_path))
    harness.c.sessions.configure(bind=dead)          # every session this process opens from now on
    try:
        res = healthz(harness)
        assert res.status_code == 503
        body = res.json()
        assert body["status"] == "fail" and body["checks"] == {"database": {"ok": False}}
        assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("database unreachable: ")
        # /metrics still answers, and says the database did not
        assert metric(harness, "wecom_database_up") == 0
        # liveness does not depend on the database: a probe must not restart every web node in an outage
        live = httpx.get(f"{harness.bot.url}/livez")
        assert live.status_code == 200 and live.json() == {"status": "alive"}
    finally:
        harness.c.sessions.configure(bind=harness.c.engine)
        dead.dispose()
    assert healthz(harness).status_code == 200 and metric(harness, "wecom_database_up") == 1


def test_healthz_is_503_when_work_is_due_for_a_minute_and_no_worker_beats(synced):
    h = synced
    assert h.driver.member_adds_clerk("SZ001").statuses == [200]
    assert healthz(h).status_code == 200             # just arrived: workers have had no chance yet
    h.clock.advance(59)
    assert healthz(h).status_code == 200
    h.clock.advance(2)
    res = healthz(h)
    assert res.status_code == 503
    body = res.json()
    assert body["checks"]["workers"]["ok"] is False and body["checks"]["workers"]["due_over_a_minute"] == ["event"]
    assert body["reasons"] == ["event rows due for 61s and no worker process has beaten within 60s"]
    h.with_workers = True
    h.c.start_workers()                              # beats at once, then drains the backlog
    assert healthz(h).status_code == 200
    assert h.wait_for(lambda: metric(h, "wecom_event_backlog", kind=ADD_KIND, status="pending") is None)


def test_healthz_stays_200_when_work_waits_but_a_worker_elsewhere_beats(synced):
    h = synced
    h.driver.member_adds_clerk("SZ001")
    h.clock.advance(120)
    assert healthz(h).status_code == 503
    with h.c.sessions.begin() as s:                  # a `--role worker` process on another host, busy
        s.add(WorkerProcess(id="other-host:42:abc", host="other-host", pid=42, role="worker",
                            started_at=h.clock.now(), beat_at=h.clock.now()))
    res = healthz(h, verbose=True)
    assert res.status_code == 200 and res.json()["checks"]["workers"]["alive"] == 1
    h.clock.advance(61)                              # … until it stops beating
    assert "no worker process has beaten within 60s" in healthz(h).json()["reasons"][0]


def test_healthz_is_503_when_this_processs_own_worker_heartbeat_is_stale(harness):
    h = harness
    beat = Heartbeat(h.c.sessions, h.clock, h.c.leases, role="all", lease_seconds=30)
    assert beat.id == process_id()
    with h.c.sessions.begin() as s:                  # as Heartbeat.start records it, without its thread
        s.add(WorkerProcess(id=beat.id, host="here", pid=os.getpid(), role="all", started_at=h.clock.now(),
                            beat_at=h.clock.now()))
    h.c.heartbeat = beat
    assert healthz(h, verbose=True).json()["checks"]["workers"]["this_process"] is True
    h.clock.advance(90)
    res = healthz(h)
    assert res.status_code == 503
    assert res.json()["reasons"] == ["this process runs workers and its heartbeat is stale (last beat 90s ago)"]
    beat.beat()
    assert healthz(h).status_code == 200


def test_healthz_is_503_when_the_scheduler_heartbeat_is_stale(harness):
    h = harness
    lease = Lease(h.c.sessions, h.clock, "sched-host:7:abc")
    assert lease.take_or_renew()
    body = healthz(h, verbose=True).json()
    assert body["checks"]["scheduler"] == {"ok": True, "expected": True, "holder": "sched-host:7:abc",
                                           "heartbeat_age_seconds": 0.0}
    h.clock.advance(45)                              # lease run out, a standby has until the minute
    assert healthz(h).status_code == 200
    h.clock.advance(16)
    res = healthz(h)
    assert res.status_code == 503
    assert res.json()["reasons"] == ["scheduler heartbeat is stale: last beat 61s ago (holder none)"]
    assert metric(h, "wecom_scheduler_heartbeat_age_seconds", name="scheduler") == 61.0
    assert Lease(h.c.sessions, h.clock, "standby:8:def").take_or_renew()   # the takeover
    assert healthz(h).status_code == 200


def test_healthz_is_503_when_a_scheduler_stopped_cleanly_and_none_took_over(harness):
    h = harness
    lease = Lease(h.c.sessions, h.clock, "sched-host:7:abc")
    lease.take_or_renew()
    lease.release()
    h.clock.advance(61)
    assert healthz(h).status_code == 503


# -- /metrics ------------------------------------------------------------------------------------
def test_metrics_show_the_backlog_per_kind_and_the_oldest_due_age(synced):
    h = synced
    queue(h, "app_message", 3)
    queue(h, "add_msg_template", 1)
    h.driver.member_adds_clerk("SZ001")
    h.clock.advance(30)
    assert metric(h, "wecom_outbox_backlog", kind="app_message", status="pending") == 3
    assert metric(h, "wecom_outbox_backlog", kind="add_msg_template", status="pending") == 1
    assert metric(h, "wecom_event_backlog", kind=ADD_KIND, status="pending") == 1
    assert metric(h, "wecom_backlog_oldest_due_seconds", table="outbox") == 30
    assert metric(h, "wecom_backlog_oldest_due_seconds", table="event") == 30
    with h.c.sessions.begin() as s:                  # one row waits for WeCom's answer to be reconciled
        s.execute(update(Outbox).where(Outbox.key == "obs:app_message:0").values(status="unknown"))
    assert metric(h, "wecom_outbox_backlog", kind="app_message", status="pending") == 2
    assert metric(h, "wecom_outbox_backlog", kind="app_message", status="unknown") == 1
    assert metric(h, "wecom_worker_processes") == 0
    h.pump()
    assert metric(h, "wecom_outbox_backlog", kind="app_message", status="pending") is None
    assert metric(h, "wecom_event_backlog", kind=ADD_KIND, status="pending") is None
    assert metric(h, "wecom_backlog_oldest_due_seconds", table="outbox") == 0


def test_metrics_count_dead_rows_and_failed_events(synced):
    h = synced
    queue(h, "no_such_endpoint", 2)                  # no executor: the worker gives up on them
    h.driver.member_adds_clerk("SZ001")
    with h.c.sessions.begin() as s:
        s.execute(update(Event).values(status="failed", last_error="RuntimeError: boom"))
    h.pump()
    assert metric(h, "wecom_outbox_dead_rows", kind="no_such_endpoint") == 2
    assert metric(h, "wecom_event_failed_rows", kind=ADD_KIND) == 1
    assert metric(h, "wecom_outbox_settled_total", kind="no_such_endpoint", status="dead") == 2


def test_metrics_count_45009s(harness):
    harness.backend.inject("externalcontact/groupchat/list", 45009, times=2)
    assert harness.c.client.external_contact_group_chat.list_owned(["zhangsan"]) is not None
    assert metric(harness, "wecom_api_rate_limited_total", endpoint="externalcontact/groupchat/list") == 2
    assert metric(harness, "wecom_api_calls_total", endpoint="externalcontact/groupchat/list", errcode="45009") == 2


def test_welcome_latency_is_a_histogram_from_the_add_to_the_send(synced):
    h = synced
    h.driver.member_adds_clerk("SZ001")
    h.clock.advance(2.5)                             # the add waited 2.5 s for a worker
    h.pump()
    with h.c.sessions() as s:
        (w,) = s.query(Welcome).all()
    assert w.status == "sent" and w.latency_ms == 2500
    assert metric(h, "wecom_welcome_latency_seconds_count") == 1
    assert metric(h, "wecom_welcome_latency_seconds_sum") == pytest.approx(2.5)
    assert metric(h, "wecom_welcome_latency_seconds_bucket", le="2.0") == 0
    assert metric(h, "wecom_welcome_latency_seconds_bucket", le="3.0") == 1


def test_a_retried_dead_row_is_sent_by_the_next_worker(synced):
    h = synced
    queue(h, "app_message", 1)
    with h.c.sessions.begin() as s:                  # as a worker leaves a row that gave up
        s.execute(update(Outbox).values(status="dead", attempts=9, done_at=h.clock.now(), last_errcode=-901))
    assert h.pump() == 0 and metric(h, "wecom_outbox_dead_rows", kind="app_message") == 1
    row = retry_outbox(h.c.sessions, h.clock, only_outbox_id(h))
    assert (row.status, row.attempts) == ("pending", 0)
    assert h.pump() == 1 and len(h.backend.app_messages) == 1
    assert metric(h, "wecom_outbox_dead_rows", kind="app_message") is None


def only_outbox_id(h) -> int:
    with h.c.sessions() as s:
        return s.query(Outbox.id).scalar()


# -- log lines -----------------------------------------------------------------------------------
def _record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("bot.x", logging.WARNING, __file__, 1, "outbox %s -> %s", ("welcome:abc", "dead"), None)
    rec.__dict__.update(extra)
    return rec


def test_json_log_lines_carry_ts_level_logger_msg_and_extra_fields():
    line = json.loads(JsonFormatter().format(_record(row_id=12, store="深圳")))
    assert set(line) == {"ts", "level", "logger", "msg", "row_id", "store"}
    assert line["level"] == "WARNING" and line["logger"] == "bot.x" and line["msg"] == "outbox welcome:abc -> dead"
    assert line["row_id"] == 12 and line["store"] == "深圳" and line["ts"].endswith("+00:00")


def test_kv_log_lines_quote_what_needs_it():
    line = KeyValueFormatter().format(_record(row_id=12))
    assert re.fullmatch(r'ts=\S+ level=WARNING logger=bot\.x msg="outbox welcome:abc -> dead" row_id=12', line)


def _config(tmp_path, port_line: str = "") -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(f"""
database_url: "sqlite:///{tmp_path / 'bot.db'}"
admin_token: a-real-token-4f9c
calendar_dir: {ROOT / 'content_calendar'}
wecom: {{corp_id: wwobs, agent_id: 1000002, secret: s, token: t,
        encoding_aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG, api_base_url: "http://127.0.0.1:9/cgi-bin/"}}
stores: [{{code: SZ001, name: 深圳科技园店, clerks: [zhangsan]}}]
{port_line}""", encoding="utf-8")
    return p


def _bot(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "bot", *argv], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_format_json_makes_every_line_a_json_object(tmp_path, where):
    cfg = str(_config(tmp_path))
    argv = ["--log-format", "json", "-v", "db", "upgrade", "--config", cfg] if where == "before" else \
        ["-v", "db", "upgrade", "--config", cfg, "--log-format", "json"]
    p = _bot(*argv)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = [json.loads(x) for x in err.splitlines() if x.strip()]
    assert lines, "no log line at -v"
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)


def test_log_format_defaults_to_key_value(tmp_path):
    p = _bot("-v", "db", "upgrade", "--config", str(_config(tmp_path)))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and all(re.match(r"ts=\S+ level=[A-Z]+ logger=\S+ msg=", x) for x in lines), lines


def test_serve_writes_an_access_log_line_per_request_as_json(tmp_path):
    port = free_port()
    p = _bot("serve", "--role", "web", "--port", str(port), "--config", str(_config(tmp_path)),
             "--log-format", "json")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz?probe=1").status_code == 200
                break
            except httpx.TransportError:
                assert p.poll() is None and time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "uvicorn.access"]
    assert len(access) == 1, err
    assert access[0]["method"] == "GET" and access[0]["path"] == "/healthz?probe=1" and access[0]["status"] == 200
    assert not [x for x in err.splitlines() if x.strip() and not x.startswith("{")], err


def test_configure_leaves_a_configured_root_alone():
    from bot.logs import configure

    root = logging.getLogger()
    mine = logging.StreamHandler(io.StringIO())
    before = list(root.handlers)
    root.addHandler(mine)
    try:
        configure(logging.INFO, "json")
        assert root.handlers == before + [mine]
    finally:
        root.removeHandler(mine)


def test_healthz_is_503_when_outbox_rows_wait_a_minute_with_no_worker(harness):
    queue(harness, "app_message", 1)
    harness.clock.advance(61)
    res = healthz(harness)
    assert res.status_code == 503
    assert res.json()["reasons"] == ["outbox rows due for 61s and no worker process has beaten within 60s"]
