"""`wecom-bot` (also `python -m bot`): the commands of DESIGN §3."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from urllib.parse import urlparse

from bot.config import CONFIG_ENV, PLACEHOLDER_ADMIN_TOKEN, ConfigError, Settings, load_settings
from bot.logs import LOG_FORMATS, configure as configure_logging, uvicorn_log_config

log = logging.getLogger("bot")

MIN_ADMIN_TOKEN = 12   # the link key: an empty or guessable one lets anyone forge sidebar and CSV links


def _setup_logging(verbose: bool, fmt: str = "kv") -> None:
    configure_logging(logging.INFO if verbose else logging.WARNING, fmt)


def _day(text: str):
    """argparse type for --date/--week: a bad date is a usage error (exit 2) naming the option."""
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY-MM-DD") from None


class Refused(Exception):
    """The command will not run with this configuration (exit 1, the message on stderr)."""


def mints_links(cmd):
    """Marks a command that mints signed links or sends messages carrying them (sidebar, chain, CSV):
    the signing key is derived from admin_token, so under the placeholder it would send links that a
    correctly configured `serve` rejects. `_settings` refuses it, for every command so marked."""
    cmd.mints_links = True
    return cmd


def _config_path(args) -> str:
    return getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or "config.yaml"


def _settings(args) -> Settings:
    settings = load_settings(_config_path(args))
    token = settings.admin_token.get_secret_value()
    if getattr(args.func, "mints_links", False) and (token == PLACEHOLDER_ADMIN_TOKEN or len(token) < MIN_ADMIN_TOKEN):
        command = args.func.__name__.removeprefix("cmd_").replace("_", " ")
        what = (f"still the placeholder {PLACEHOLDER_ADMIN_TOKEN!r}" if token == PLACEHOLDER_ADMIN_TOKEN else
                f"{'empty' if not token else 'shorter than ' + str(MIN_ADMIN_TOKEN) + ' characters'} (anyone could "
                "forge links signed with it)")
        raise Refused(f"{settings.source}: admin_token: {what}; set a real one (or WECOM_BOT_ADMIN_TOKEN) before "
                      f"`{command}`: the links it sends are signed with a key derived from it")
    return settings


def cmd_db_upgrade(args) -> int:
    from bot.db.engine import make_engine
    from bot.db.migrate import current, upgrade

    settings = _settings(args)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    print(f"database at revision {current(engine)} ({engine.url.render_as_string(hide_password=True)})")
    return 0


def cmd_sync(args) -> int:
    from bot.bootstrap import bootstrap

    if args.apply and not args.prune:
        print("sync: --apply goes with --prune (`wecom-bot sync --prune --apply`)", file=sys.stderr)
        return 2
    settings = _settings(args)
    if not settings.stores:
        print(f"{settings.source}: stores: no stores configured", file=sys.stderr)
        return 1
    c = bootstrap(settings, migrate=True)
    total = len(settings.stores)
    step = max(1, total // 20)

    def progress(n: int, total: int, r) -> None:
        if r.error or r.changes or n % step == 0 or n == total:
            what = f"error: {r.error}" if r.error else (", ".join(r.changes) or "unchanged")
            print(f"[{n}/{total}] {r.code}: {what}", flush=True)

    provisioner = c.provisioner()
    report = provisioner.sync(settings.stores, concurrency=args.concurrency, progress=progress)
    print(report.summary())
    for line in (report.staff.lines() if report.staff is not None else []):   # gone clerks, pending handovers
        print(line)
    if report.unassigned:
        print(f"{len(report.unassigned)} group(s) belong to no store (no broadcasts; ops told):")
        for chat_id, (owner, why) in sorted(report.unassigned.items()):
            print(f"  {chat_id} owner {owner}: {why}")
    if report.retired:
        print(f"{len(report.retired)} store(s) no longer in the config: "
              + ", ".join(f"{st.code} {st.name}" for st in report.retired))
        if not args.prune:
            print("  `wecom-bot sync --prune` shows what closing them does; `--prune --apply` does it")
    if args.prune:
        if not report.retired:
            print("prune: every store in the database is in the config; nothing to remove")
        lines = provisioner.prune(report.retired, apply=args.apply)
        for line in lines:
            print(("closed: " if args.apply else "would close: ") + line)
        if report.retired and not args.apply:
            print("dry run: nothing changed; add --apply to delete these QR codes at WeCom and close the stores")
    c.close()
    return 1 if report.failed else 0


@mints_links
def cmd_serve(args) -> int:
    from bot.app import create_app
    from bot.bootstrap import bootstrap
    from bot.db.migrate import lock_file
    from bot.scheduler import FileLock, Scheduler, fcntl, process_id
    from bot.web import server_options
    import uvicorn

    settings = _settings(args)
    c = bootstrap(settings)
    # SQLite has one writer: a second process's writes queue on SQLite's own lock, not on this
    # process's fair one (a web + worker split measured 0.03x of one process). So one `serve` per
    # database file, held by a file lock the kernel drops when the process dies; short-lived
    # commands (sync, report, qr check, ...) do not take it.
    path = lock_file(c.engine, ".serve.lock")
    serve_lock = FileLock(path) if path is not None and fcntl is not None else None
    if serve_lock is not None and not serve_lock.try_acquire(f"{process_id()} --role {args.role}"):
        c.close()
        print(f"serve: another `wecom-bot serve` ({serve_lock.owner()}) already serves the SQLite database "
              f"{c.engine.url.database} (lock {path}). SQLite runs one `serve` with `--role all`; several processes "
              "(--role web, worker, scheduler) need PostgreSQL (database_url: postgresql+psycopg://...).",
              file=sys.stderr)
        return 2
    if serve_lock is not None and args.role != "all":
        log.warning("serve --role %s on SQLite: no other `serve` may run on this file, so the other roles' work "
                    "is done by nobody; use --role all (or PostgreSQL for split roles)", args.role)
    c.migrate()
    scheduler = metrics_server = None
    if args.role in ("all", "worker"):
        c.start_workers(role=args.role)
    if args.role in ("all", "scheduler"):
        scheduler = Scheduler(c)
        scheduler.start()
    try:
        if args.role in ("all", "web"):
            app = create_app(c)
            # What start-up allocated lives as long as the process: keep it out of the collector's
            # full passes, which otherwise stall every request now and then.
            gc.collect()
            gc.freeze()
            # the access log (on by default), through the root handler: the same kv or JSON lines as the bot's
            uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=settings.access_log,
                        log_config=uvicorn_log_config(), **server_options(settings))
        else:
            # No app here, but what this process counts (welcome latency, 45009s, WeCom calls) is in its
            # own registry only: /metrics on --port, for the scraper.
            from prometheus_client import start_http_server
            try:
                metrics_server, _ = start_http_server(args.port, args.host, registry=c.metrics.registry)
            except OSError as e:
                log.warning("serve --role %s: /metrics not served on %s:%s (%s)", args.role, args.host, args.port, e)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if scheduler:
            scheduler.stop()
        c.close()
        if serve_lock is not None:
            serve_lock.release()
    return 0


def cmd_sandbox(args) -> int:
    from bot.sandbox.standalone import run_sandbox

    settings = _settings(args)
    base = urlparse(settings.wecom.api_base_url)
    return run_sandbox(settings, host=args.host or base.hostname or "127.0.0.1", port=args.port or base.port or 8800,
                       callback_url=args.callback_url or settings.public_base_url.rstrip("/") + "/wecom/callback")


def cmd_demo(args) -> int:
    from bot.demo import run_demo

    return run_demo(members=args.members, serve=args.serve, calendar_dir=args.calendar_dir)


def cmd_report(args) -> int:
    from bot.bootstrap import bootstrap
    from bot.report import print_report

    settings = _settings(args)
    c = bootstrap(settings, migrate=True)
    print_report(c.sessions, settings.tz, args.date or c.clock.now().date())
    c.close()
    return 0


def cmd_digest(args) -> int:
    """Send the morning digest of --date (default yesterday) now; idempotent per (date, recipient)."""
    from bot.bootstrap import bootstrap
    from bot.digest import send_digest

    c = bootstrap(_settings(args), migrate=True)
    try:
        report = send_digest(c, args.date)
        print(report.summary())
        if report.queued:
            print(f"{drain_outbox(c, 0)} WeCom call(s) made")
    finally:
        c.close()
    return 0


@mints_links  # it delivers the outbox, whose messages carry links
def cmd_qr_check(args) -> int:
    from bot.bootstrap import bootstrap

    c = bootstrap(_settings(args), migrate=True)
    counts = c.check_qr()
    sent = c.outbox_worker("qr-check")
    while sent.run_once():  # deliver the alerts now; serve's workers would otherwise
        pass
    print(f"{counts['stores']} stores checked: {counts['opened']} new findings, {counts['resolved']} cleared, "
          f"{counts['repaired']} repaired")
    from bot.report import print_findings
    print_findings(c.sessions, c.settings.tz)
    c.close()
    return 0


def cmd_check(args) -> int:
    """Validate config and calendar (file:line: message, exit 1), then print the week's plan."""
    from datetime import timedelta
    from pathlib import Path

    from bot.calendar.calendar import ContentCalendar
    from bot.welcome.content import WelcomeContent

    try:
        settings = _settings(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    cal_dir = Path(settings.path(settings.calendar_dir))
    if not (cal_dir / "default.yaml").exists():
        print(f"{cal_dir / 'default.yaml'}:1: the calendar's default.yaml is missing", file=sys.stderr)
        return 1
    codes = [st.code for st in settings.stores]
    calendar = ContentCalendar(cal_dir, slots=settings.broadcast.slots, store_codes=codes, log_problems=False)
    problems = [str(p) for p in calendar.problems]
    for w in calendar.warnings:
        print(w, file=sys.stderr)
    welcome = WelcomeContent(cal_dir)
    if welcome.last_error:
        problems.append(welcome.last_error)
    problems += welcome.file_problems
    if args.store and args.store not in codes:
        problems.append(f"{settings.source}:1: --store {args.store}: no configured store has this code")
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{len(problems)} problem(s); the bot keeps the last good calendar until they are fixed", file=sys.stderr)
        return 1
    from bot.clock import SystemClock
    start = args.week or SystemClock(settings.tz).now().date()
    monday = start - timedelta(days=start.weekday())
    store = next((st for st in settings.stores if st.code == args.store), None)
    print(f"config and calendar OK: {settings.source}, {cal_dir} ({len(calendar.files())} files, "
          f"slots {', '.join(settings.broadcast.slots)}, receive cap {settings.broadcast.receive_cap})")
    who = f"store {store.code} {store.name}" if store else "chain-wide (no region or store overrides; --store CODE for one store)"
    print(f"\nweek of {monday:%Y-%m-%d}, {who}; * = marked for the day's mass message\n")
    print(calendar.week_grid(store.code if store else "", monday,
                             {"code": store.code, "name": store.name, "benefit": store.benefit or ""} if store else None,
                             clerk=store.clerks[0] if store else "zhangsan"))
    return 0


@mints_links  # sidebar links in the owners' reminders, even with --no-send (queued now, sent later)
def cmd_slot_fire(args) -> int:
    from bot.bootstrap import bootstrap
    from bot.scheduler import run_slot

    settings = _settings(args)
    if args.slot not in settings.broadcast.slots:
        print(f"slot {args.slot!r} is not one of broadcast.slots ({', '.join(settings.broadcast.slots)})",
              file=sys.stderr)
        return 2
    c = bootstrap(settings, migrate=True)
    try:
        report = run_slot(c, args.slot, args.date)
        print(report.summary())
        if not args.no_send:
            sent = drain_outbox(c, wait_seconds=settings.broadcast.reminder_spread_seconds + 15)
            print(f"{sent} WeCom call(s) made (mass messages, owner reminders spread over the first minute)")
    finally:
        c.close()
    return 0


def cmd_dead(args) -> int:
    """What gave up (failed events, dead outbox rows), newest first; or put one back in the queue."""
    import json

    from bot.bootstrap import bootstrap
    from bot.health import NotRetried, gave_up, retry_event, retry_outbox

    c = bootstrap(_settings(args), migrate=True)
    try:
        if args.retry is not None or args.event is not None:
            try:
                if args.retry is not None:
                    row = retry_outbox(c.sessions, c.clock, args.retry)
                    print(f"outbox {row.id} {row.kind} {row.key}: back to pending, attempts reset; serve's workers "
                          "send it" + ("; uncertain, so WeCom is asked first whether it already has it"
                                       if row.uncertain else ""))
                    if row.deadline and row.deadline <= c.clock.now():
                        print(f"  its deadline passed ({row.deadline.astimezone(c.settings.tz):%Y-%m-%d %H:%M:%S}):"
                              " it will be recorded expired, not sent")
                else:
                    row = retry_event(c.sessions, c.clock, args.event)
                    print(f"event {row.id} {row.kind}: back to pending, attempts reset; serve's workers handle it")
            except NotRetried as e:
                print(e, file=sys.stderr)
                return 1
            return 0
        events, rows, n_events, n_rows = gave_up(c.sessions, args.limit)
        if args.json:
            print(json.dumps({"events": [e.as_dict() for e in events], "outbox": [r.as_dict() for r in rows],
                              "failed_events": n_events, "dead_outbox_rows": n_rows}, ensure_ascii=False, indent=2))
            return 0
        if not n_events and not n_rows:
            print("nothing gave up: no failed events, no dead outbox rows")
            return 0
        for title, items, total, option in (("failed events", events, n_events, "--event ID"),
                                            ("dead outbox rows", rows, n_rows, "--retry ID")):
            print(f"{total} {title}" + (f" (newest {len(items)}; --limit N for more)" if total > len(items) else "")
                  + (f"; retry one with {option}" if total else ""))
            for g in items:
                at = f"{g.at.astimezone(c.settings.tz):%Y-%m-%d %H:%M:%S}" if g.at else "-"
                code = f" errcode {g.errcode}" if g.errcode else ""
                flag = " uncertain" if g.uncertain else ""
                error = (g.error or "").replace("\n", " ")[:160]
                print(f"  {g.table} {g.id}  {at}  {g.kind}  {g.key}  attempts {g.attempts}{code}{flag}  {error}")
        return 0
    finally:
        c.close()


def cmd_handover(args) -> int:
    """Print the on-job handover of a clerk's store customers and groups; --apply performs it."""
    from bot.bootstrap import bootstrap
    from bot.staff import handover
    from bot.staff.onjob import plan_onjob

    settings = _settings(args)
    c = bootstrap(settings, migrate=True)
    try:
        plans = plan_onjob(c.sessions, c.client, settings, args.clerk, args.store, args.to)
        if not plans:
            print(f"{args.clerk}: nothing to hand over (no store keeps groups or customers of this clerk)")
            return 0
        bad = False
        for plan in plans:
            print("\n".join(plan.lines()))
            bad = bad or bool(plan.problems)
        if not args.apply:
            print("（只是计划：加 --apply 才会转接）" if not bad else "（有问题，--apply 也不会执行）")
            return 1 if bad else 0
        with c.sessions.begin() as s:
            queued = sum(handover.apply_plan(s, c.clock, plan) for plan in plans)
        drain_outbox(c, 0)   # the transfers now; their results are followed by `serve`
        print(f"已提交 {queued} 个转接请求（24小时后完成；客户可拒绝）")
        return 1 if bad else 0
    finally:
        c.close()


def drain_outbox(c, wait_seconds: float) -> int:
    """Run the outbox here until nothing is due or waiting within `wait_seconds` (for one-shot commands)."""
    from sqlalchemy import func, select

    from bot.db.engine import reads_of
    from bot.db.models import Outbox

    worker = c.outbox_worker("cli")
    deadline = c.clock.timestamp() + wait_seconds
    total = 0
    while True:
        n = worker.run_once()
        total += n
        if n:
            continue
        with reads_of(c.sessions)() as s:
            waiting = s.scalar(select(func.count()).select_from(Outbox).where(Outbox.status == "pending")) or 0
        if not waiting or c.clock.timestamp() > deadline:
            return total
        c.clock.sleep(0.5)


class _Parser(argparse.ArgumentParser):
    """Every command and subcommand takes --config, -v and --log-format where the user types them (`wecom-bot serve
    --config X`, `wecom-bot --config X serve`, `slot fire 10:00 --config X`): subparsers are built of this
    class too (add_subparsers' default), and SUPPRESS keeps a level that was not given from overwriting
    one that was, so the subcommand's value wins only when given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", default=argparse.SUPPRESS,
                          help=f"config file (default: ${CONFIG_ENV}, else ./config.yaml)")
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO")
        self.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS,
                          help="log lines as key=value (kv, the default) or JSON objects (json)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wecom-bot", description="WeCom community-operations bot")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="bot + bundled WeCom sandbox on loopback, a simulated burst of members")
    d.add_argument("--members", type=int, default=60, help="members in the burst (default 60)")
    d.add_argument("--serve", action="store_true", help="keep the bot and sandbox up afterwards")
    d.add_argument("--calendar-dir", default=None, help="content calendar (default ./content_calendar)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="the long-running bot")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--role", choices=["all", "web", "worker", "scheduler"], default="all")
    s.set_defaults(func=cmd_serve)

    sb = sub.add_parser("sandbox", help="the WeCom simulator alone (for trying serve without a corp)")
    sb.add_argument("--host", default=None)
    sb.add_argument("--port", type=int, default=None, help="default: the port of wecom.api_base_url")
    sb.add_argument("--callback-url", default=None, help="default: public_base_url + /wecom/callback")
    sb.set_defaults(func=cmd_sandbox)

    sy = sub.add_parser("sync", help="create or repair each store's contact way and join way")
    sy.add_argument("--concurrency", type=int, default=4)
    sy.add_argument("--prune", action="store_true",
                    help="also list what closing the stores no longer in the config would do (a dry run)")
    sy.add_argument("--apply", action="store_true",
                    help="with --prune: delete their contact way and join way at WeCom and close them")
    sy.set_defaults(func=cmd_sync)

    ho = sub.add_parser("handover", help="hand a clerk's store customers and groups to a successor (on-job)")
    ho.add_argument("clerk")
    ho.add_argument("--store", help="store code (default: every store that no longer lists the clerk)")
    ho.add_argument("--to", help="the successor (default: the store's successor, else its clerk with fewest customers)")
    ho.add_argument("--apply", action="store_true", help="perform it (otherwise only print the plan)")
    ho.set_defaults(func=cmd_handover)
    r = sub.add_parser("report", help="the day's funnel per store, QR findings, welcomes")
    r.add_argument("--date", type=_day, default=None, help="YYYY-MM-DD (default today, in the configured zone)")
    r.set_defaults(func=cmd_report)

    dg = sub.add_parser("digest", help="send the morning digest now; idempotent per (date, recipient)")
    dg.add_argument("--date", type=_day, default=None,
                    help="YYYY-MM-DD, the day it reports on (default yesterday, in the configured zone)")
    dg.set_defaults(func=cmd_digest)

    ck = sub.add_parser("check", help="validate config and calendar; print the week's plan")
    ck.add_argument("--store", default=None, help="plan for this store (its region and store overrides)")
    ck.add_argument("--week", type=_day, default=None, help="a day in the week to show (default this week)")
    ck.set_defaults(func=cmd_check)

    sl = sub.add_parser("slot", help="broadcast slots")
    sls = sl.add_subparsers(dest="slot_command", required=True)
    sf = sls.add_parser("fire", help="fire one slot now; idempotent per (date, slot, group)")
    sf.add_argument("slot", metavar="HH:MM")
    sf.add_argument("--date", type=_day, default=None, help="YYYY-MM-DD (default today)")
    sf.add_argument("--no-send", action="store_true", help="plan and queue only; serve's workers send")
    sf.set_defaults(func=cmd_slot_fire)

    q = sub.add_parser("qr", help="QR health")
    qs = q.add_subparsers(dest="qr_command", required=True)
    qc = qs.add_parser("check", help="evaluate QR health now and send the alerts it finds")
    qc.set_defaults(func=cmd_qr_check)

    dd = sub.add_parser("dead", help="list failed events and dead outbox rows; retry one")
    again = dd.add_mutually_exclusive_group()
    again.add_argument("--retry", type=int, metavar="ID", default=None,
                       help="put dead outbox row ID back to pending, attempts reset (an uncertain row stays so)")
    again.add_argument("--event", type=int, metavar="ID", default=None,
                       help="put failed event ID back to pending, attempts reset")
    dd.add_argument("--limit", type=int, default=50, help="rows of each kind to list (default 50)")
    dd.add_argument("--json", action="store_true", help="list as JSON")
    dd.set_defaults(func=cmd_dead)

    db = sub.add_parser("db", help="database")
    dbs = db.add_subparsers(dest="db_command", required=True)
    up = dbs.add_parser("upgrade", help="apply migrations")
    up.set_defaults(func=cmd_db_upgrade)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False), getattr(args, "log_format", "kv"))
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"configuration error:\n{e}", file=sys.stderr)
        return 2
    except Refused as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
