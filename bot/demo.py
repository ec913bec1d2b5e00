"""`wecom-bot demo`: the bot and the bundled WeCom sandbox on loopback, on the embedded defaults
(SQLite in a temporary folder), with a burst of customers adding store clerks."""

from __future__ import annotations

import re
import secrets
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
from sqlalchemy import func, select

from bot.broadcast.report import slot_figures
from bot.db.engine import reads_of
from bot.db.models import Chain, ChainOrder, Event, FunnelFact, Outbox, Welcome
from bot.report import print_report
from bot.sandbox.backend import WeComBackend
from bot.sandbox.errors import SandboxError
from bot.sandbox.harness import Harness
from bot.scheduler import follow_up_broadcasts, run_slot
from bot.staff.handover import handover_status

DEMO_STORES = [
    {"code": "SZ001", "name": "深圳科技园店", "clerks": ["zhangsan"]},
    {"code": "SZ002", "name": "深圳海岸城店", "clerks": ["lisi", "wangwu"]},
    {"code": "GZ001", "name": "广州天河店", "clerks": ["zhaoliu"], "benefit": "天河店新客：入群领8元无门槛券"},
]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {_pct(values, .5) * 1000:.0f} ms, p95 {_pct(values, .95) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


def run_demo(members: int = 60, serve: bool = False, calendar_dir: str | None = None) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="wecom-bot-demo-"))
    # The demo's day lasts seconds, so an add ripens after 3 s instead of the 5 minutes of a real day,
    # and two reports need 3 silent adds instead of 6.
    h = Harness(database_url=f"sqlite:///{tmp / 'demo.db'}", stores=DEMO_STORES, calendar_dir=calendar_dir,
                settings_overrides={"qr_health": {"grace_minutes": 0.05, "report_min_adds": 3},
                                    "broadcast": {"reminder_spread_seconds": 0}})
    h.start()
    backend, c, driver, settings = h.backend, h.c, h.driver, h.cfg
    backend.add_clerk("wangwu", admin_welcome=True)  # has a console welcome set: WeCom issues no code
    print(f"WeCom sandbox  {h.sandbox.url}  (corp {h.corp.corp_id}, {sum(map(len, h.groups.values()))} customer groups)")
    print(f"wecom-bot      {h.bot.url}  (SQLite {tmp / 'demo.db'}; content {h.calendar_dir})")
    bot, sandbox = h.bot, h.sandbox

    try:
        res = driver.verify_url()
        print(f"\n1. WeCom verifies the callback URL: HTTP {res.status_code}, echo "
              f"{'matches' if res.text == res.expected else 'WRONG'}")

        print("\n2. wecom-bot sync: contact way (clerk QR) and join way (group QR) per store")
        report = c.provisioner().sync(settings.stores, progress=lambda n, t, r: print(
            f"   [{n}/{t}] {r.code}: {r.groups} groups; {', '.join(r.changes) or 'unchanged'}"
            + (f"; error: {r.error}" if r.error else "")))
        again = c.provisioner().sync(settings.stores)
        print(f"   {report.summary()}\n   second run: {again.summary()}")

        print(f"\n3. Morning: {members} customers scan store QR codes at once, add a clerk, and most join the group")
        codes = [s.code for s in settings.stores]
        states = [codes[i % len(codes)] for i in range(members)]
        deliveries: list = []
        burst = threading.Thread(target=lambda: deliveries.extend(driver.burst(states, join=0.75)), daemon=True)
        started = time.monotonic()
        burst.start()
        while burst.is_alive():
            burst.join(0.5)
            print(f"   {time.monotonic() - started:4.1f}s  contacts added {len(backend.welcome_codes) + _no_code(backend)}"
                  f"/{members}, welcomes delivered {len(backend.welcomes)}", flush=True)
        _drain(c)

        chain_summary = _chain_race(h)

        # WeCom redelivers when it thinks the bot was slow: the very same request again.
        sample = next(d for d in deliveries if d.kind.startswith("change_external_contact"))
        params, body = sample.request
        dup_statuses = [driver.post(params, body).status_code for _ in range(3)]

        broken = "GZ001"
        print(f"\n4. Midday: {broken}'s group QR breaks (scanning it fails for everyone); customers keep adding the clerk")
        backend.break_qr(broken, "nobody")
        alert = None
        for n in range(1, 30):
            added = driver.member_adds_clerk(broken)
            ext = added.fields["ExternalUserID"]
            try:
                driver.member_joins_group(broken, ext)
            except SandboxError:
                pass  # "scanned it, system error, can't join"
            _drain(c)
            page = _page_link(backend, ext)
            if page and n in (4, 5):   # these two open the welcome's 「点此进群（二维码打不开点这里）」 and report
                if n == 4:   # after trying a while: the adds before them have ripened into silence (grace 3 s)
                    time.sleep(3.2)
                httpx.get(page)
                httpx.post(page + "/report", data={"reason": "error"})
                print(f"   customer {n} could not join, opened the group-QR page from the welcome and tapped "
                      "「扫码进不了群？告诉店员」")
                _drain(c)
                told = next((m for m in reversed(backend.app_messages)
                             if "顾客进不了群" in m.get("text", {}).get("content", "")), None)
                if told and n == 4:
                    print(f"   the clerk {told['touser']} hears of that customer at once:\n   "
                          + told["text"]["content"].replace("\n", "\n   "))
            alert = next((m for m in backend.app_messages if "二维码异常" in m.get("text", {}).get("content", "")
                          and broken in m["text"]["content"]), None)
            if alert:
                print(f"   after {n} customers the bot alerted {alert['touser']}:")
                print("   " + alert["text"]["content"].replace("\n", "\n   "))
                break
            time.sleep(0.4)
        if alert is None:
            print("   no alert (unexpected)")
        print("\n5. The clerk makes a new group QR; customers join again")
        backend.break_qr(broken, "fix")
        c.provisioner().sync([s for s in settings.stores if s.code == broken])
        again = driver.member_adds_clerk(broken)
        driver.member_joins_group(broken, again.fields["ExternalUserID"])
        _drain(c)
        clear = next((m for m in backend.app_messages if "已恢复" in m.get("text", {}).get("content", "")), None)
        print(f"   all-clear to {clear['touser']}: {clear['text']['content']}" if clear else "   no all-clear (unexpected)")
        recovery = next((t for t in backend.templates.values() if t["chat_type"] == "single"), None)
        if recovery:
            n = len(recovery["targets"])
            print(f"   the {n} customer{'s' if n != 1 else ''} it stranded get{'s' if n == 1 else ''} the working group QR again "
                  f"(a mass message {recovery['creator']} confirms): {recovery['text']['content']}")

        leaver, store = "wangwu", "SZ002"
        print(f"\n5b. {leaver} of {store} leaves the company (an admin deletes the member in WeCom)")
        mine = [ch for ch, g in backend.groups.items() if g.owner == leaver]
        driver.clerk_leaves(leaver)
        _drain(c)
        way = next(w for w in backend.contact_ways.values() if w["state"] == store)
        print(f"   the counter QR of {store} now reaches {', '.join(way['user'])}")
        added = driver.member_adds_clerk(store)
        _drain(c)
        print(f"   a customer scans it and adds {added.fields['UserID']}: the counter QR keeps working")
        moved = [ch for ch in mine if ch in backend.groups and backend.groups[ch].owner != leaver]
        print(f"   {len(moved)}/{len(mine)} of {leaver}'s groups now belong to "
              f"{', '.join(sorted({backend.groups[ch].owner for ch in moved})) or '-'}; "
              "customers go over with WeCom's 24-hour takeover")

        print("\n6. The clerk asks the bot: 数据 (today's stats)")
        driver.clerk_says("zhaoliu", "数据")
        _drain(c)
        reply = [m for m in backend.app_messages if m["touser"] == "zhaoliu" and "今日数据" in m["text"]["content"]]
        if reply:
            print("   " + reply[-1]["text"]["content"].replace("\n", "\n   "))

        slots_summary = _slots(h)

        # the scheduler sends yesterday's at digest.time; the demo's day is today, so today's it is
        print("\n6b. The morning digest (digest.time, here of today): one app message per clerk")
        from bot.digest import send_digest
        send_digest(c, c.clock.now().astimezone(settings.tz).date())
        _drain(c)
        digest = next((m for m in backend.app_messages if m["touser"] == "zhaoliu"
                       and m["msgtype"] == "text" and m["text"]["content"].startswith("【早报")), None)
        if digest:
            print("   " + digest["text"]["content"].replace("\n", "\n   "))

        _summary(c, backend, deliveries, dup_statuses, time.monotonic() - started)
        print(slots_summary)
        print(chain_summary)
        who = _console_member(h)
        print(f"  ops console               {bot.url}/admin  (WeCom login through the sandbox, as {who}; "
              + ("one-click login below)" if serve else "--serve keeps it up and prints a one-click login)"))
        if serve:
            print(f"\nServing: bot {bot.url} (/healthz, /metrics), sandbox {sandbox.url}/_sandbox/state. Ctrl-C stops.")
            print(f"  ops console      {bot.url}/admin")
            print(f"  one-click login  {console_login_link(bot.url, sandbox.url, who)}  (the sandbox's WeCom login, as {who})")
            print(f"  toolbar sidebar  {bot.url}/sidebar  (the customer-group chat-toolbar page; in a plain browser it says so)")
            threading.Event().wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        h.stop()


def _console_member(h: Harness) -> str:
    """Who the demo's console login signs in as: the first of ops_userids (sees every store), else the
    first store's first clerk (sees their store)."""
    ops = list(h.cfg.ops_userids)
    if ops:
        h.backend.add_member(ops[0])          # a member of the corp, not a clerk: the sandbox must know them
        return ops[0]
    return DEMO_STORES[0]["clerks"][0]


def console_login_link(bot_url: str, sandbox_url: str, userid: str) -> str:
    """One click into /admin: the sandbox remembers the member, the bot's own login runs (its state
    cookie bound to this browser), and the sandbox's WeCom page picks the member at once."""
    return (f"{sandbox_url}/_sandbox/auth/as/{quote(userid, safe='')}?"
            + urlencode({"next": f"{bot_url}/admin/login?next=/admin"}))


def _no_code(backend: WeComBackend) -> int:
    return sum(1 for e in backend.external.values() if set(e["follow"]) & backend.admin_welcome)


def _chain_race(h: Harness, stock: int = 50, crowd: int = 150) -> str:
    """A clerk opens a chain by chat command; a crowd races for it through the page API."""


    c, driver, backend = h.c, h.driver, h.backend
    print(f"\n3b. 小张 opens a group-buy by chat: 开团 阳光玫瑰葡萄 39.9元 {stock}份 每人限2 截止明天18:00")
    driver.clerk_says("zhangsan", f"开团 阳光玫瑰葡萄 39.9元 {stock}份 每人限2 截止明天18:00")
    _drain(c)
    reply = next(m["text"]["content"] for m in reversed(backend.app_messages)
                 if m["touser"] == "zhangsan" and "已开团" in m["text"]["content"])
    print("   " + reply.replace("\n", "\n   "))
    token = re.search(r"/c/([\w-]+)", reply).group(1)
    chat = h.groups["SZ001"][0]
    statuses: list[int] = []

    http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32))

    def buyer(i: int) -> int:
        body = {"name": f"顾客{i}", "phone_tail": f"{i:04d}", "qty": 1 + i % 2, "request_id": secrets.token_hex(8),
                "g": chat}
        return http.post(f"{h.bot.url}/c/{token}/orders", json=body).status_code

    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool, http:
        statuses = list(pool.map(buyer, range(crowd)))
    took = time.monotonic() - t0
    with reads_of(c.sessions)() as s:
        chain = s.scalar(select(Chain).where(Chain.token == token))
        sold = sum(o.qty for o in s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id,
                                                                     ChainOrder.status == "active")))
    print(f"   {crowd} members raced for {stock} portions in {took:.1f}s: {statuses.count(201)} orders accepted "
          f"({sold} portions), {statuses.count(409)} told it is sold out; stock left {chain.stock_left}")
    driver.clerk_says("zhangsan", f"截单 {chain.id}")
    _drain(c)
    pick = next((m["text"]["content"] for m in backend.app_messages if "【备货名单】" in m["text"]["content"]), "")
    print("   截单 → the pick list reached 小张:\n   " + "\n   ".join(pick.splitlines()[:5]) + "\n   ……")
    return (f"  group-buy                 {sold}/{stock} portions sold to {statuses.count(201)} members "
            f"(oversold: {max(0, sold - stock)}), pick list {'sent' if pick else 'MISSING'}")


def _slots(h: Harness) -> str:
    """Tomorrow's four slots, fired now one after the other (the demo's day is compressed). Tomorrow's,
    so that the calendar's content is still valid whatever the hour: an entry's `expires` (say 14:00
    for the 12:00 offer) would expire today's mass messages of a demo run in the afternoon."""
    c, backend = h.c, h.backend
    today = c.clock.now().astimezone(c.settings.tz).date() + timedelta(days=1)
    print(f"\n6b. Tomorrow's broadcast slots from content_calendar/, fired now (receive cap "
          f"{c.settings.broadcast.receive_cap}: one mass message per group a day, the other slots reach the owner "
          "as a reminder)")
    senders: Counter = Counter()
    for slot in c.settings.broadcast.slots:
        before = len(backend.templates)
        report = run_slot(c, slot, today)
        _drain(c)
        made = list(backend.templates.values())[before:]
        print(f"   {slot}  {report.mass} groups by mass message ({len(made)} owner tasks), "
              f"{report.reminders} by reminder to {len(report.reminded_owners)} clerks")
        senders.update(t["creator"] for t in made)
        if made:
            print("      mass message tasks by sender: " + ", ".join(
                f"{k} {v}" for k, v in sorted(Counter(t["creator"] for t in made).items())))
        for t in made[:-1]:          # the owners tap 发送 in WeCom — all but one, who is reminded later
            backend.confirm_groupmsg(t["msgid"])
    print("   the day's mass message tasks by sender (one mass message per group a day): "
          + ", ".join(f"{k} {v}" for k, v in sorted(senders.items())))
    card = next(m for m in backend.app_messages if m["msgtype"] == "textcard")
    url = card["textcard"]["url"]
    page = httpx.get(url, headers={"user-agent": "wxwork/4.1 demo"})
    chat = next(r for r in __import__("re").findall(r'data-chat="([^"]+)"', page.text))
    httpx.post(url.replace("?sig=", "/sent?sig="), json={"chat_id": chat})
    print(f"   {card['touser']} got \"{card['textcard']['title']}\", opened the sidebar (HTTP {page.status_code}) and "
          f"sent to {chat} with one tap")
    follow_up_broadcasts(c)
    _drain(c)
    with reads_of(c.sessions)() as s:
        figures = slot_figures(s, today)
    mass = sum(f.mass for f in figures)
    return (f"  broadcasts                {sum(f.groups for f in figures)} group-slots fired: {mass} by mass message "
            f"({sum(f.mass_sent for f in figures)} confirmed and delivered, {sum(f.mass_awaiting for f in figures)} "
            f"awaiting the owner), {sum(f.reminder for f in figures)} by owner reminder "
            f"({sum(f.tapped for f in figures)} sent from the sidebar); over the cap: "
            f"{sum(r == 3 for t in backend.templates.values() for r in (x['status'] for x in t['results'].values()))}")


def _drain(c, timeout: float = 25) -> None:
    """Wait for the bot's workers to finish what is due (events handled, outbox sent)."""
    deadline = time.monotonic() + timeout
    time.sleep(0.05)
    while time.monotonic() < deadline and _pending(c):
        time.sleep(0.05)


def _pending(c) -> int:
    with reads_of(c.sessions)() as s:
        # due now: a handover's transfer_result look an hour ahead is not work to wait for
        due = c.clock.now() + timedelta(seconds=5)
        return (s.scalar(select(func.count()).select_from(Outbox).where(
                    Outbox.status.in_(["pending", "running", "unknown"]), Outbox.next_attempt_at <= due))
                + s.scalar(select(func.count()).select_from(Event).where(Event.status.in_(["pending", "running"]))))


def _summary(c, backend: WeComBackend, deliveries, dup_statuses, seconds: float) -> None:
    with reads_of(c.sessions)() as s:
        welcomes = s.scalars(select(Welcome)).all()
        events = s.scalar(select(func.count()).select_from(Event))
    adds = [w for w in welcomes]
    status = Counter(w.status for w in welcomes)
    skipped = Counter(w.reason for w in welcomes if w.status == "skipped")
    sent = [w for w in welcomes if w.status in ("sent", "already")]
    wecom_latency = [w["latency"] for w in backend.welcomes]
    redelivered = sum(1 for d in deliveries if len(d.statuses) > 1)
    print(f"\n7. A redelivered callback (same bytes, 3 more times): HTTP {dup_statuses}; each was stored once")
    print(f"\nSummary ({seconds:.1f}s)")
    print(f"  contacts added            {len(adds)}  (morning burst callbacks acknowledged: "
          f"{sum(d.acked for d in deliveries)}/{len(deliveries)}, redelivered by WeCom: {redelivered}; "
          f"events stored {events})")
    print(f"  welcomes sent             {len(sent)}  (latency, add event → WeCom accepted: {_ms(wecom_latency)})")
    print(f"  group QR attached         {sum(w.qr_attached for w in welcomes)}")
    print(f"  welcomes expired          {status.get('expired', 0)}"
          + "".join(f"; {w.external_userid} after {w.latency_ms} ms" for w in welcomes if w.status == "expired"))
    print(f"  no welcome possible       {sum(skipped.values())}  ({', '.join(f'{k}: {v}' for k, v in skipped.items()) or '-'})"
          "  ← no_code: the clerk has a console welcome set, so WeCom issues no welcome code")
    print(f"  failed                    {status.get('failed', 0)}")
    with reads_of(c.sessions)() as s:
        viewed = s.scalar(select(func.count()).select_from(FunnelFact).where(FunnelFact.kind == "viewed"))
        reports = s.scalar(select(func.count()).select_from(FunnelFact).where(FunnelFact.kind.like("report:%")))
        handovers = handover_status(s)
    print(f"  group-QR page             {viewed} opened, {reports} reported they could not join")
    for ho in handovers:
        print(f"  handover                  {ho['from']} → {ho['to']} ({ho['store']}): {ho['customers']} customers "
              f"(WeCom takes them over within 24 h), {ho['chats_moved']}/{ho['chats']} groups moved")
    print()
    print_report(c.sessions, c.settings.tz, c.clock.now().date())


def _page_link(backend: WeComBackend, external_userid: str) -> str | None:
    """The group-QR page link in the welcome this customer got."""
    for w in backend.welcomes:
        if w["external_userid"] == external_userid:
            return next((a["link"]["url"] for a in w["attachments"] if a["msgtype"] == "link"), None)
    return None


def _chats(backend: WeComBackend, state: str) -> set[str]:
    return {c for w in backend.join_ways.values() if w["state"] == state for c in w["chat_id_list"]}



