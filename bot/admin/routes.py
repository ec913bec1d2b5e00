"""The ops console's pages: `/admin` (the chain today, 7 and 30 days; the store table), `/admin/stores/{code}`,
`/admin/calendar?store=&week=` (the week as the store's groups will receive it), `/admin/broadcasts?date=&store=`
(each slot's delivery per store and per group), `/admin/chains` and `/admin/chains/{id}`; and the POST actions
(bot.admin.actions), each with the session's CSRF token, answered by a 303 back with a flash message.
Server-rendered, no script: sorting and filtering are query parameters. Every figure comes from the queries
`wecom-bot report` uses (bot.funnel.figures.funnel, bot.funnel.findings.open_findings,
bot.broadcast.report.slot_figures and store_slot_figures)."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadData
from itsdangerous.encoding import base64_decode, base64_encode
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from bot.admin.actions import AdminActions
from bot.admin.auth import AdminAuth, Viewer, page, safe_next
from bot.admin.dashboard_figures import DashboardFigures
from bot.broadcast.dispatch import OPS_PAUSED, slot_time
from bot.broadcast.planner import allowance, mass_slots
from bot.broadcast.report import SlotFigures, slot_figures, store_slot_figures
from bot.chains.service import ORDER_STATUS_ZH
from bot.db.engine import reads_of
from bot.db.models import Chain, ChainOrder, GroupChat, QrFinding, SlotDelivery, Store
from bot.links import ADMIN, LinkSigner, Verdict
from bot.text import mask_name, mask_phone
from bot.funnel.alerts import KIND_ZH
from bot.funnel.figures import StoreFunnel, fmt_rate, funnel
from bot.funnel.findings import open_findings
from bot.text import yuan

log = logging.getLogger(__name__)
env = jinja2.Environment(loader=jinja2.PackageLoader("bot", "templates"), autoescape=True)
PERIODS = {"today": ("今天", 0), "7d": ("近7天", 6), "30d": ("近30天", 29)}
SORTS = ("code", "region", "adds", "conv", "findings")
PAGE_ROWS = 200
SCAN_CAP = 200     # members who can join a group by scanning its QR (wecom-facts: 200-scan limit)
WEEKDAY_ZH = "一二三四五六日"
STORE_ROWS = 50        # stores listed per slot on /admin/broadcasts without a store filter
CHAIN_ROWS = 200
CHAIN_RECENT_DAYS = 14  # closed chains listed on /admin/chains
SLOT = re.compile(r"[0-2][0-9]:[0-5][0-9]")
# What bot.provisioning.sync reports (StoreSyncResult.changes), as ops read it on the store page.
SYNC_CHANGES_ZH = {
    "contact way created": "已创建加好友二维码", "contact way repaired": "已修复加好友二维码",
    "contact way gone at WeCom: recreated": "加好友二维码在企业微信已被删除，已重建",
    "contact way replaced (clerk count changed)": "店员人数变化，已替换加好友二维码",
    "contact way adopted after a lost answer": "加好友二维码已找回（上次应答丢失）",
    "join way created": "已创建群二维码", "join way repaired": "已修复群二维码",
    "join way gone at WeCom: recreated": "群二维码在企业微信已被删除，已重建",
}
FLASH_COOKIE = "wb_admin_flash"
FLASH_MINUTES = 2


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{max(minutes, 0)}分钟"
    if minutes < 48 * 60:
        return f"{minutes // 60}小时"
    return f"{minutes // 1440}天"


def _totals(total: StoreFunnel) -> dict:
    """A period's card: every store's figures added up (DashboardFigures.periods)."""
    return {"adds": total.adds, "viewed": total.viewed, "joined": total.converted, "joins": total.joins,
            "conversion": fmt_rate(total.conversion)}


SPARK_DAYS = 14   # the store table's sparklines: adds and joined a day, today last
SPARK_H, SPARK_BAR = 24, 6     # the viewBox's height; each day's width in it


def sparkline(code: str, days: list[date], series: list[StoreFunnel] | None) -> dict:
    """One store's daily adds (bars) and joined (a line) as SVG coordinates, scaled to its own peak, with
    the figures spelled out for the title and aria-label: readable without hovering or a screen."""
    series = series or [StoreFunnel(code) for _ in days]
    adds = [f.adds for f in series]
    joined = [f.converted for f in series]
    peak = max([1, *adds, *joined])
    scale = (SPARK_H - 2) / peak
    # one path for the bars (200 rows × 14 rects make the page twice as heavy)
    bars = " ".join(f"M{i * SPARK_BAR + 1} {SPARK_H}v-{round(n * scale, 1):g}h4v{round(n * scale, 1):g}z"
                    for i, n in enumerate(adds) if n)
    line = " ".join(f"{i * SPARK_BAR + SPARK_BAR / 2:g},{round(SPARK_H - 1 - n * scale, 1):g}"
                    for i, n in enumerate(joined))
    label = (f"{code} 近{len(days)}天（{days[0]:%m-%d}至{days[-1]:%m-%d}）每日加好友 {' '.join(map(str, adds))}；"
             f"进群 {' '.join(map(str, joined))}")
    return {"bars": bars, "line": line, "label": label, "peak": peak, "adds": adds, "joined": joined,
            "width": len(days) * SPARK_BAR, "height": SPARK_H}


class AdminPages:
    def __init__(self, c):
        self.c = c
        self.st = c.settings
        self.tz = c.settings.tz
        self.figures = DashboardFigures(self.tz, SPARK_DAYS)   # /admin: closed days counted once a day
        self._regions: tuple[object, dict[str, str]] = (None, {})

    # -- helpers --------------------------------------------------------------------------
    def region_of(self, code: str) -> str:
        # kept per calendar snapshot (a reload makes a new one): 4,800 stores × the regions' patterns through
        # fnmatch were a tenth of /admin's time
        snap = self.c.calendar.snapshot
        kept_snap, kept = self._regions
        if kept_snap is not snap:
            kept = {}
            self._regions = (snap, kept)
        reg = kept.get(code)
        if reg is None:
            reg = kept[code] = next((name for name, pats, _ in snap.regions
                                     if any(fnmatch.fnmatchcase(code, p) for p in pats)), "")
        return reg

    def stores(self, s, v: Viewer) -> list[Store]:
        q = select(Store).where(Store.closed_at.is_(None)).order_by(Store.code)
        if not v.everything:
            q = q.where(Store.code.in_(sorted(v.stores)))
        return list(s.scalars(q))

    def render(self, name: str, v: Viewer, **ctx) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(viewer=v, **ctx))

    # -- /admin ---------------------------------------------------------------------------
    def dashboard(self, v: Viewer, period: str, sort: str, desc: bool, q: str, region: str, only_findings: bool,
                  page_no: int) -> HTMLResponse:
        now = self.c.clock.now()
        today = now.astimezone(self.tz).date()
        period = period if period in PERIODS else "today"
        sort = sort if sort in SORTS else "code"
        with reads_of(self.c.sessions)() as s:
            # code and name only: 4,800 whole Store rows take half a second to build
            sq = select(Store.code, Store.name).where(Store.closed_at.is_(None)).order_by(Store.code)
            stores = list(s.execute(sq if v.everything else sq.where(Store.code.in_(sorted(v.stores)))))
            scope = None if v.everything else [st.code for st in stores]
            # 30 days of facts for 4,800 stores take seconds to count: the days before today are kept
            closed = self.figures.closed(s, today, scope)
            shown_figs, sums, today_figs = self.figures.periods(s, closed, [back for _, back in PERIODS.values()],
                                                                PERIODS[period][1], scope)
            findings = open_findings(s, scope)
            slots = slot_figures(s, today, scope)
            # chains counted in the database: a month of a chain's chains is 20,000 rows
            mine = [Chain.store_code.in_(scope)] if scope is not None else []
            starts = {key: datetime.combine(today - timedelta(days=back), time(0), self.tz)
                      for key, (_, back) in PERIODS.items()}
            taken = Chain.stock_total - Chain.stock_left
            counted = s.execute(select(*[func.coalesce(func.sum(taken).filter(Chain.created_at >= since), 0)
                                         for since in starts.values()],
                                       func.coalesce(func.sum(taken * Chain.price_cents)
                                                     .filter(Chain.created_at >= starts["today"]), 0))
                                .where(Chain.created_at >= min(starts.values()), *mine)).one()
            live = [Chain.status == "open", Chain.deadline > now, *mine]
            running = list(s.scalars(select(Chain).where(*live).order_by(Chain.id.desc()).limit(20)))
            running_total = s.scalar(select(func.count()).select_from(Chain).where(*live))
        names = {st.code: st.name for st in stores}
        open_by_store: dict[str, int] = {}
        for f in findings:
            open_by_store[f.store_code] = open_by_store.get(f.store_code, 0) + 1
        sold = dict(zip(starts, counted[:-1]))
        sold_cents = counted[-1]

        rows = []
        needle = q.strip().lower()
        for st in stores:
            reg = self.region_of(st.code)
            if needle and needle not in st.code.lower() and needle not in st.name.lower():
                continue
            if region and reg != region:
                continue
            n_open = open_by_store.get(st.code, 0)
            if only_findings and not n_open:
                continue
            f = shown_figs.get(st.code) or StoreFunnel(st.code)
            rows.append({"code": st.code, "name": st.name, "region": reg, "adds": f.adds, "joined": f.converted,
                         "conv": f.conversion, "conv_text": fmt_rate(f.conversion), "findings": n_open})
        key = {"code": lambda r: r["code"], "region": lambda r: (r["region"], r["code"]),
               "adds": lambda r: r["adds"], "conv": lambda r: (-1 if r["conv"] is None else r["conv"]),
               "findings": lambda r: r["findings"]}[sort]
        rows.sort(key=key, reverse=desc)
        pages = max(1, -(-len(rows) // PAGE_ROWS))
        page_no = min(max(1, page_no), pages)
        shown = rows[(page_no - 1) * PAGE_ROWS: page_no * PAGE_ROWS]
        days = [today - timedelta(days=back) for back in range(SPARK_DAYS - 1, -1, -1)]
        with reads_of(self.c.sessions)() as s:   # the shown page's stores only: one query for all of them
            daily = self.figures.days(s, closed, [r["code"] for r in shown], today_figs)
        for r in shown:
            r["spark"] = sparkline(r["code"], days, daily.get(r["code"]))
        base = {"period": period, "sort": sort, "desc": "1" if desc else "", "q": q, "region": region,
                "findings": "1" if only_findings else ""}

        def link(**over) -> str:
            params = {k: val for k, val in {**base, **over}.items() if val not in ("", None)}
            return "/admin?" + urlencode(params)

        def sort_link(col: str) -> str:
            return link(sort=col, desc="" if (sort == col and desc) else ("1" if sort == col or col != "code" else ""),
                        page="")

        regions = sorted({self.region_of(st.code) for st in stores} - {""})
        return self.render(
            "admin_dashboard.html", v, today=today, periods=PERIODS, period=period,
            totals={k: _totals(t) for k, t in zip(PERIODS, sums)}, sold=sold, sold_yuan=yuan(sold_cents),
            findings=[{"store": f.store_code, "name": names.get(f.store_code, ""), "kind": KIND_ZH.get(f.kind, f.kind),
                       "age": _age(now - f.opened_at), "since": f.since.astimezone(self.tz)} for f in findings[:50]],
            findings_total=len(findings), slots=slots, running=running, running_total=running_total,
            names=names, rows=shown, total_rows=len(rows), store_count=len(stores), page_no=page_no, pages=pages,
            link=link, sort_link=sort_link, sort=sort, desc=desc, q=q, region=region, regions=regions,
            only_findings=only_findings, yuan=yuan, tz=self.tz)

    # -- /admin/stores/{code} -------------------------------------------------------------
    def store(self, v: Viewer, code: str, flash: str | None = None) -> HTMLResponse:
        now = self.c.clock.now()
        today = now.astimezone(self.tz).date()
        with reads_of(self.c.sessions)() as s:
            st = s.get(Store, code)
            if st is None or not v.may_see(code):
                return page(404, "没有这家门店", f"门店 {code} 不存在，或不在你负责的门店里。", ("/admin", "返回总览"))
            days = []
            for back in range(13, -1, -1):
                d = today - timedelta(days=back)
                f = funnel(s, d, d, self.tz, [code]).get(code, StoreFunnel(code))
                days.append({"day": d, "adds": f.adds, "joined": f.converted, "conv": fmt_rate(f.conversion)})
            t = funnel(s, today, today, self.tz, [code]).get(code, StoreFunnel(code))
            hours = [{"hour": h, "adds": t.hours.get(h, {}).get("add", 0), "joins": t.hours.get(h, {}).get("join", 0)}
                     for h in range(24)]
            history = list(s.scalars(select(QrFinding).where(QrFinding.store_code == code)
                                     .order_by(QrFinding.opened_at.desc()).limit(50)))
            groups = list(s.scalars(select(GroupChat).where(GroupChat.store_code == code,
                                                            GroupChat.dismissed_at.is_(None)).order_by(GroupChat.chat_id)))
            monday = today - timedelta(days=today.weekday())
            week_days = [(monday + timedelta(days=i)).isoformat() for i in range(7)]
            deliveries = list(s.scalars(select(SlotDelivery).where(SlotDelivery.store_code == code,
                                                                   SlotDelivery.day.in_(week_days))))
            chains = list(s.scalars(select(Chain).where(Chain.store_code == code).order_by(Chain.id.desc()).limit(20)))
        slots: dict[tuple[str, str], dict[str, int]] = {}
        for r in deliveries:
            cell = slots.setdefault((r.day, r.slot), {})
            label = f"{'群发' if r.mode == 'mass' else '提醒'}·{_delivery(r, None, self.tz)['label']}"
            cell[label] = cell.get(label, 0) + 1
        peak = max([1] + [d["adds"] for d in days])
        hour_peak = max([1] + [h["adds"] for h in hours] + [h["joins"] for h in hours])
        return self.render(
            "admin_store.html", v, store=st, region=self.region_of(code), days=days, peak=peak, hours=hours,
            hour_peak=hour_peak, today=today, history=history, kind_zh=KIND_ZH, tz=self.tz, groups=groups,
            scan_cap=SCAN_CAP, slot_rows=sorted(slots.items()), chains=chains, yuan=yuan, now=now, monday=monday,
            flash=flash, sync_note=self._sync_note(code))

    def _sync_note(self, code: str) -> dict | None:
        """The last sync this console queued for the store, as ops read it."""
        row = AdminActions(self.c).last_sync(code)
        if row is None:
            return None
        head = f"上次后台同步 {row.created_at.astimezone(self.tz):%m-%d %H:%M}："
        res = row.result or {}
        if row.status in ("pending", "running"):
            return {"text": head + "排队中", "bad": False}
        if row.status != "done":
            return {"text": head + f"未完成（{row.last_error or row.status}）", "bad": True}
        if res.get("error"):
            return {"text": head + f"同步出错：{res['error']}", "bad": True}
        if res.get("skipped"):
            return {"text": head + "未同步：门店已关闭或没有店员", "bad": True}
        changes = [SYNC_CHANGES_ZH.get(x, x) for x in res.get("changes") or []]
        return {"text": head + ("；".join(changes) if changes else "无需修改"), "bad": False}

    # -- /admin/calendar --------------------------------------------------------------------
    def calendar(self, v: Viewer, code: str | None, week: str | None) -> HTMLResponse:
        today = self.c.clock.now().astimezone(self.tz).date()
        try:
            start = date.fromisoformat(week) if week else today
        except ValueError:
            start = today
        monday = start - timedelta(days=start.weekday())
        with reads_of(self.c.sessions)() as s:
            stores = self.stores(s, v)
        if not stores:
            return page(404, "没有门店", "你负责的门店里没有营业中的门店。")
        store = next((st for st in stores if st.code == code), None) if code else stores[0]
        if store is None:
            return page(404, "没有这家门店", f"门店 {code} 不存在，或不在你负责的门店里。", ("/admin", "返回总览"))
        cal = self.c.calendar
        rule = self.st.broadcast.receive_cap
        store_ctx = {"code": store.code, "name": store.name, "benefit": store.benefit or ""}
        clerk = store.clerks[0] if store.clerks else "zhangsan"
        days, used = [], 0
        for i in range(7):
            d = monday + timedelta(days=i)
            if d.weekday() == 0:
                used = 0
            plan = cal.day(store.code, d)
            masses = mass_slots(plan.values(), allowance(rule, d, used) if rule != "daily_1" else 1)
            used += len(masses)
            items = []
            for slot in cal.slots:
                e = plan.get(slot)
                if e is None:
                    continue
                try:
                    r = cal.render(e, cal.sample_context(store_ctx, clerk, day=d, slot=slot))
                    text, attachments, error = r.text, r.attachments, None
                except Exception as exc:   # a template error shows where it is, as check prints it
                    text, attachments, error = "", (), f"{e.origin}: {exc}"
                items.append({"slot": slot, "kind": e.kind_zh, "mass": slot in masses, "text": text,
                              "attachments": [_attachment(a) for a in attachments], "origin": e.origin,
                              "error": error})
            days.append({"day": d, "weekday": WEEKDAY_ZH[i], "entries": items})
        return self.render("admin_calendar.html", v, store=store, stores=stores, monday=monday, days=days,
                           prev=(monday - timedelta(days=7)).isoformat(), next=(monday + timedelta(days=7)).isoformat(),
                           problems=[str(p) for p in cal.problems], rule=rule)


    # -- /admin/broadcasts ------------------------------------------------------------------
    def broadcasts(self, v: Viewer, day_text: str | None, code: str | None, flash: str | None) -> HTMLResponse:
        now = self.c.clock.now()
        today = now.astimezone(self.tz).date()
        try:
            day = date.fromisoformat(day_text) if day_text else today
        except ValueError:
            day = today
        with reads_of(self.c.sessions)() as s:
            stores = self.stores(s, v)
            names = {st.code: st.name for st in stores}
            if code and code not in names:
                return page(404, "没有这家门店", f"门店 {code} 不存在，或不在你负责的门店里。",
                            ("/admin/broadcasts", "返回推送"))
            scope = [code] if code else (None if v.everything else list(names))
            figures = {f.slot: f for f in slot_figures(s, day, scope)}
            per_store = store_slot_figures(s, day, scope)
            pq = select(SlotDelivery.slot, SlotDelivery.store_code, func.count()).where(
                SlotDelivery.day == day.isoformat(), SlotDelivery.status == "paused", SlotDelivery.reason == OPS_PAUSED)
            if scope is not None:
                pq = pq.where(SlotDelivery.store_code.in_(scope))
            ops_paused = {(sl, st): n for sl, st, n in s.execute(pq.group_by(SlotDelivery.slot, SlotDelivery.store_code))}
            rows, groups = [], {}
            if code:
                rows = list(s.scalars(select(SlotDelivery).where(SlotDelivery.day == day.isoformat(),
                                                                 SlotDelivery.store_code == code)
                                      .order_by(SlotDelivery.slot, SlotDelivery.chat_id)))
                groups = {g.chat_id: g for g in s.scalars(select(GroupChat).where(GroupChat.store_code == code))}
        plan = self.c.calendar.day(code, day) if code else {}
        slots = []
        for sl in sorted(set(self.st.broadcast.slots) | set(figures)):
            mine = sorted(((st, f) for (x, st), f in per_store.items() if x == sl),
                          key=lambda p: (-sum(p[1].failed.values()), -p[1].not_fired, p[0]))
            entry = plan.get(sl)
            slots.append({
                "slot": sl, "id": sl.replace(":", ""), "fig": figures.get(sl, SlotFigures(sl)),
                "passed": now >= slot_time(day, sl, self.tz),
                "stores": [{"code": st, "name": names.get(st, ""), "fig": f, "ops_paused": ops_paused.get((sl, st), 0)}
                           for st, f in mine[:STORE_ROWS]],
                "store_total": len(mine), "entry": entry.kind_zh if entry else None,
                "ops_paused": ops_paused.get((sl, code), 0) if code else 0,
                "groups": [_delivery(r, groups.get(r.chat_id), self.tz) for r in rows if r.slot == sl]})
        back = "/admin/broadcasts?" + urlencode({k: val for k, val in (("date", day_text or ""), ("store", code or ""))
                                                 if val})
        return self.render(
            "admin_broadcasts.html", v, day=day, today=today, actionable=day == today, code=code or "",
            store_name=names.get(code or "", ""), stores=stores, pick_list=len(stores) <= 300, slots=slots,
            prev=(day - timedelta(days=1)).isoformat(), next=(day + timedelta(days=1)).isoformat(),
            back=back, flash=flash, actions=AdminActions(self.c).recent(scope, 10), tz=self.tz,
            names=names, store_rows=STORE_ROWS)

    # -- /admin/chains ----------------------------------------------------------------------
    def chains(self, v: Viewer, code: str | None, flash: str | None) -> HTMLResponse:
        now = self.c.clock.now()
        since = now - timedelta(days=CHAIN_RECENT_DAYS)
        with reads_of(self.c.sessions)() as s:
            stores = self.stores(s, v)
            names = {st.code: st.name for st in stores}
            if code and code not in names:
                return page(404, "没有这家门店", f"门店 {code} 不存在，或不在你负责的门店里。", ("/admin/chains", "返回团购"))
            q = select(Chain).where((Chain.status == "open") | (Chain.closed_at >= since) | (Chain.deadline >= since))
            if code:
                q = q.where(Chain.store_code == code)
            elif not v.everything:
                q = q.where(Chain.store_code.in_(list(names)))
            chains = list(s.scalars(q.order_by(Chain.deadline.desc()).limit(CHAIN_ROWS + 1)))
            counts = dict(s.execute(select(ChainOrder.chain_id, func.count()).where(
                ChainOrder.chain_id.in_([ch.id for ch in chains]), ChainOrder.status == "active")
                .group_by(ChainOrder.chain_id)).all()) if chains else {}
        more = len(chains) > CHAIN_ROWS
        rows = [self._chain_row(ch, now, counts.get(ch.id, 0), names) for ch in chains[:CHAIN_ROWS]]
        rows.sort(key=lambda r: (not r["running"], r["deadline_ts"] if r["running"] else -r["deadline_ts"]))
        return self.render("admin_chains.html", v, rows=rows, more=more, code=code or "", stores=stores,
                           pick_list=len(stores) <= 300, flash=flash, days=CHAIN_RECENT_DAYS)

    def _chain_row(self, ch: Chain, now: datetime, orders: int, names: dict[str, str]) -> dict:
        running = ch.status == "open" and ch.deadline > now
        status = ("未开始" if ch.opens_at > now else "进行中") if running else (
            "到点待截单" if ch.status == "open" else ("已截单（到点）" if ch.closed_reason == "deadline" else "已提前截单"))
        return {"chain": ch, "store": ch.store_code, "store_name": names.get(ch.store_code, ""), "running": running,
                "status": status, "sold": ch.stock_total - ch.stock_left, "orders": orders,
                "deadline": ch.deadline.astimezone(self.tz), "deadline_ts": ch.deadline.timestamp(),
                "price": yuan(ch.price_cents), "csv": self.c.chains.csv_link(ch)}

    def chain(self, v: Viewer, chain_id: int, flash: str | None) -> HTMLResponse:
        now = self.c.clock.now()
        with reads_of(self.c.sessions)() as s:
            ch = s.get(Chain, chain_id) if 0 < chain_id < 2 ** 31 else None
            if ch is None or not v.may_see(ch.store_code):
                return page(404, "没有这个团购", f"团购 #{chain_id} 不存在，或不在你负责的门店里。", ("/admin/chains", "返回团购"))
            st = s.get(Store, ch.store_code)
            numbered = self.c.chains.numbered(s, ch)
            groups = {g.chat_id: g.name for g in s.scalars(select(GroupChat).where(GroupChat.store_code == ch.store_code))}
        row = self._chain_row(ch, now, sum(o.status == "active" for _, o in numbered), {ch.store_code: st.name if st else ""})
        orders = [{"n": n, "name": mask_name(o.name), "phone": mask_phone(o.phone_tail) if o.phone_tail else "",
                   "qty": o.qty, "amount": yuan(o.qty * ch.price_cents), "group": groups.get(o.chat_id, "") or "",
                   "at": o.created_at.astimezone(self.tz), "status": o.status} for n, o in numbered]
        return self.render("admin_chain.html", v, row=row, ch=ch, orders=orders, flash=flash,
                           link=self.c.chains.link(ch), opens=ch.opens_at.astimezone(self.tz),
                           closed_at=ch.closed_at.astimezone(self.tz) if ch.closed_at else None,
                           active_qty=sum(o["qty"] for o in orders if o["status"] == "active"),
                           status_zh=ORDER_STATUS_ZH)


STATE_ZH = {"planned": ("未发出", "meta"), "paused": ("已暂停", "meta"), "skipped": ("跳过", "meta"),
            "failed": ("失败", "bad"), "cancelled": ("已取消", "bad")}


def _delivery(r: SlotDelivery, g: GroupChat | None, tz) -> dict:
    """One group's row of a slot as ops read it: mass or reminder, and where it stands."""
    if r.status in STATE_ZH:
        label, css = STATE_ZH[r.status]
    elif r.mode == "mass":
        label, css = {"queued": ("群发创建中", ""), "awaiting": ("待群主确认", ""), "sent": ("已确认发出", "ok")}.get(
            r.status, (r.status, ""))
    elif r.tapped_at is not None or r.status == "sent":
        label, css = "已点发送", "ok"
    else:
        label, css = {"queued": ("提醒发送中", ""), "reminded": ("已提醒，未点发送" if r.opened_at is None
                                                             else "已打开侧边栏，未点发送", "")}.get(r.status, (r.status, ""))
    return {"chat_id": r.chat_id, "name": (g.name if g else "") or r.chat_id, "owner": r.owner,
            "mode": "群发" if r.mode == "mass" else "提醒", "label": label, "css": css, "reason": r.reason or "",
            "fired": r.fired_at.astimezone(tz) if r.fired_at else None,
            "sent": (r.sent_at or r.tapped_at).astimezone(tz) if (r.sent_at or r.tapped_at) else None}


class Flash:
    """The sentence shown once after a POST's 303: in a short-lived signed cookie, so no link can put
    its own words on the page (as the chain page's ?error= codes)."""

    def __init__(self, signer: LinkSigner, clock, secure: bool):
        self.signer, self.clock, self.secure = signer, clock, secure

    def set(self, resp: Response, text: str) -> None:
        head = base64_encode(json.dumps(text, ensure_ascii=False).encode()).decode()
        sig = self.signer.sign(ADMIN, ["flash", text], self.clock.now() + timedelta(minutes=FLASH_MINUTES))
        resp.set_cookie(FLASH_COOKIE, f"{head}.{sig}", max_age=FLASH_MINUTES * 60, path="/admin", httponly=True,
                        samesite="lax", secure=self.secure)

    def take(self, request: Request) -> str | None:
        head, _, sig = (request.cookies.get(FLASH_COOKIE) or "").partition(".")
        if not head:
            return None
        try:
            text = json.loads(base64_decode(head).decode("utf-8"))
        except (BadData, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(text, str) or self.signer.verify(ADMIN, ["flash", text], sig) is not Verdict.OK:
            return None
        return text

    @staticmethod
    def shown(request: Request, resp: Response) -> Response:
        if request.cookies.get(FLASH_COOKIE):
            resp.delete_cookie(FLASH_COOKIE, path="/admin")
        return resp


def _attachment(a: dict) -> dict:
    """A calendar attachment ({image: path} or {link: {title, url, desc}}, {miniprogram: {…}}) as shown."""
    kind = next(iter(a), "file")
    val = a.get(kind)
    body = val if isinstance(val, dict) else {"title": str(val or "")}
    label = {"image": "图片", "link": "链接", "miniprogram": "小程序", "video": "视频", "file": "文件"}.get(kind, kind)
    return {"kind": label, "type": kind, "title": body.get("title") or body.get("page") or "",
            "url": body.get("url") or "", "desc": body.get("desc") or ""}


def admin_router(c) -> APIRouter:
    r = APIRouter()
    auth = AdminAuth(c.settings, c.links, c.sessions, c.client, c.clock)
    pages = AdminPages(c)
    actions = AdminActions(c)
    flash = Flash(c.links, c.clock, auth.secure)

    @r.get("/admin/login")
    def login(request: Request, next: str = "/admin"):
        return auth.login(request, next)

    @r.get("/admin/auth")
    async def oauth_back(request: Request, code: str = "", state: str = ""):
        return await run_in_threadpool(auth.callback, request, code, state)   # calls WeCom: not on the loop

    @r.post("/admin/logout")
    def logout(request: Request, csrf: str = Form("")):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        if not auth.csrf_ok(v, csrf):
            return page(403, "请求无效", "表单已失效（CSRF 校验失败），请刷新页面后再试。")
        return auth.logout()

    @r.get("/admin")
    def dashboard(request: Request, period: str = "today", sort: str = "code", desc: str = "", q: str = "",
                  region: str = "", findings: str = "", page: int = 1):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        return pages.dashboard(v, period, sort, desc == "1", q[:60], region[:60], findings == "1", page)

    @r.get("/admin/stores/{code}")
    def store(request: Request, code: str):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        return flash.shown(request, pages.store(v, code, flash.take(request)))

    @r.get("/admin/calendar")
    def calendar(request: Request, store: str = "", week: str = ""):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        return pages.calendar(v, store or None, week or None)

    @r.get("/admin/broadcasts")
    def broadcasts(request: Request, date: str = "", store: str = ""):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        return flash.shown(request, pages.broadcasts(v, date[:10] or None, store[:30] or None, flash.take(request)))

    @r.get("/admin/chains")
    def chains(request: Request, store: str = ""):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        return flash.shown(request, pages.chains(v, store[:30] or None, flash.take(request)))

    @r.get("/admin/chains/{chain_id}")
    def chain(request: Request, chain_id: int):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        return flash.shown(request, pages.chain(v, chain_id, flash.take(request)))

    # -- POST actions: viewer, CSRF, the store's scope; then the action; then 303 back with a flash --
    def allowed(request: Request, action: str, csrf: str, find: Callable[[], str | None],
                missing: str) -> tuple[Viewer, str] | Response:
        """The viewer who may do `action`, and the store it acts on; or the answer instead. Viewer and
        CSRF before any read: a forged or anonymous request learns nothing and costs no query. `find`
        gives the open store's code (None: no such store, chain or open store)."""
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        if not auth.csrf_ok(v, csrf):
            log.warning("admin action %s refused for %s: CSRF token missing or wrong", action, v.userid)
            return page(403, "请求无效", "表单已失效（CSRF 校验失败），请刷新页面后再试。")
        store = find()
        if store is None and v.everything:
            return page(404, "没有找到", missing, ("/admin", "返回总览"))
        if store is None or not v.may_see(store):
            log.warning("admin action %s refused for %s: %s not theirs", action, v.userid, store or missing)
            return page(403, "无权操作", "这不在你负责的门店里，不能操作。", ("/admin", "返回总览"))
        return v, store

    def open_store(code: str) -> Callable[[], str | None]:
        def find() -> str | None:
            if not code or len(code) > 30 or not code.isprintable():   # never a code (a NUL PostgreSQL refuses): no query
                return None
            with reads_of(c.sessions)() as s:
                st = s.get(Store, code)
            return code if st is not None and st.closed_at is None else None
        return find

    def chain_store(chain_id: int) -> Callable[[], str | None]:
        def find() -> str | None:
            if not 0 < chain_id < 2 ** 31:
                return None
            with reads_of(c.sessions)() as s:
                ch = s.get(Chain, chain_id)
            return ch.store_code if ch is not None else None
        return find

    def back_to(back: str, default: str, text: str) -> Response:
        resp = RedirectResponse(safe_next(back) if back.startswith("/admin") else default, status_code=303)
        flash.set(resp, text)
        return resp

    def slot_action(request: Request, action: str, csrf: str, store: str, slot: str, back: str) -> Response:
        ok = allowed(request, action, csrf, open_store(store), f"门店 {store[:30]} 不存在或已关闭。")
        if isinstance(ok, Response):
            return ok
        v, store = ok
        if not SLOT.fullmatch(slot) or slot not in c.settings.broadcast.slots:
            return page(400, "没有这个时段", f"推送时段只有 {'、'.join(c.settings.broadcast.slots)}。")
        done = getattr(actions, action)(v.userid, store, slot)
        return back_to(back, "/admin/broadcasts?" + urlencode({"store": store}), done.message)

    @r.post("/admin/broadcasts/fire")
    def fire(request: Request, csrf: str = Form(""), store: str = Form(""), slot: str = Form(""), back: str = Form("")):
        return slot_action(request, "fire", csrf, store, slot, back)

    @r.post("/admin/broadcasts/pause")
    def pause(request: Request, csrf: str = Form(""), store: str = Form(""), slot: str = Form(""), back: str = Form("")):
        return slot_action(request, "pause", csrf, store, slot, back)

    @r.post("/admin/broadcasts/resume")
    def resume(request: Request, csrf: str = Form(""), store: str = Form(""), slot: str = Form(""),
               back: str = Form("")):
        return slot_action(request, "resume", csrf, store, slot, back)

    @r.post("/admin/stores/{code}/sync")
    def sync(request: Request, code: str, csrf: str = Form(""), back: str = Form("")):
        ok = allowed(request, "sync", csrf, open_store(code), f"门店 {code[:30]} 不存在或已关闭。")
        if isinstance(ok, Response):
            return ok
        v, code = ok
        done = actions.sync(v.userid, code)
        return back_to(back, f"/admin/stores/{code}", done.message)

    @r.post("/admin/chains/{chain_id}/close")
    def close_chain(request: Request, chain_id: int, csrf: str = Form(""), back: str = Form("")):
        ok = allowed(request, "close_chain", csrf, chain_store(chain_id), f"团购 #{chain_id} 不存在。")
        if isinstance(ok, Response):
            return ok
        v, _ = ok
        done = actions.close_chain(v.userid, chain_id)
        return back_to(back, f"/admin/chains/{chain_id}", done.message)

    return r
