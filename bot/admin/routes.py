"""The ops console's pages: `/admin` (the chain today, 7 and 30 days; the store table), `/admin/stores/{code}`
and `/admin/calendar?store=&week=` (the week as the store's groups will receive it). Server-rendered, no
script: sorting and filtering are query parameters. Every figure comes from the queries `wecom-bot report`
uses (bot.funnel.figures.funnel, bot.funnel.findings.open_findings, bot.broadcast.report.slot_figures)."""

from __future__ import annotations

import fnmatch
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from bot.admin.auth import AdminAuth, Viewer, page
from bot.broadcast.planner import allowance, mass_slots
from bot.broadcast.report import slot_figures
from bot.db.engine import reads_of
from bot.db.models import Chain, GroupChat, QrFinding, SlotDelivery, Store
from bot.funnel.alerts import KIND_ZH
from bot.funnel.figures import StoreFunnel, fmt_rate, funnel
from bot.funnel.findings import open_findings
from bot.text import yuan

env = jinja2.Environment(loader=jinja2.PackageLoader("bot", "templates"), autoescape=True)
PERIODS = {"today": ("今天", 0), "7d": ("近7天", 6), "30d": ("近30天", 29)}
SORTS = ("code", "region", "adds", "conv", "findings")
PAGE_ROWS = 200
SCAN_CAP = 200     # members who can join a group by scanning its QR (wecom-facts: 200-scan limit)
WEEKDAY_ZH = "一二三四五六日"


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{max(minutes, 0)}分钟"
    if minutes < 48 * 60:
        return f"{minutes // 60}小时"
    return f"{minutes // 1440}天"


def _totals(figs: dict[str, StoreFunnel]) -> dict:
    adds = sum(f.adds for f in figs.values())
    converted = sum(f.converted for f in figs.values())
    return {"adds": adds, "viewed": sum(f.viewed for f in figs.values()), "joined": converted,
            "joins": sum(f.joins for f in figs.values()),
            "conversion": fmt_rate(converted / adds if adds else None)}


class AdminPages:
    def __init__(self, c):
        self.c = c
        self.st = c.settings
        self.tz = c.settings.tz

    # -- helpers --------------------------------------------------------------------------
    def region_of(self, code: str) -> str:
        for name, pats, _ in self.c.calendar.snapshot.regions:
            if any(fnmatch.fnmatchcase(code, p) for p in pats):
                return name
        return ""

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
            stores = self.stores(s, v)
            scope = None if v.everything else [st.code for st in stores]
            figs = {key: funnel(s, today - timedelta(days=back), today, self.tz, scope)
                    for key, (_, back) in PERIODS.items()}
            findings = open_findings(s, scope)
            slots = slot_figures(s, today, scope)
            cq = select(Chain).where(Chain.created_at >= datetime.combine(today - timedelta(days=29), time(0), self.tz))
            if scope is not None:
                cq = cq.where(Chain.store_code.in_(scope))
            chains = list(s.scalars(cq.order_by(Chain.id.desc())))
        names = {st.code: st.name for st in stores}
        open_by_store: dict[str, int] = {}
        for f in findings:
            open_by_store[f.store_code] = open_by_store.get(f.store_code, 0) + 1
        running = [ch for ch in chains if ch.status == "open" and ch.deadline > now]
        sold = {}
        for key, (_, back) in PERIODS.items():
            since = datetime.combine(today - timedelta(days=back), time(0), self.tz)
            sold[key] = sum(ch.stock_total - ch.stock_left for ch in chains if ch.created_at >= since)
        sold_cents = sum((ch.stock_total - ch.stock_left) * ch.price_cents for ch in chains
                         if ch.created_at >= datetime.combine(today, time(0), self.tz))

        rows = []
        needle = q.strip().lower()
        for st in stores:
            f = figs[period].get(st.code, StoreFunnel(st.code))
            reg = self.region_of(st.code)
            if needle and needle not in st.code.lower() and needle not in st.name.lower():
                continue
            if region and reg != region:
                continue
            n_open = open_by_store.get(st.code, 0)
            if only_findings and not n_open:
                continue
            rows.append({"code": st.code, "name": st.name, "region": reg, "adds": f.adds, "joined": f.converted,
                         "conv": f.conversion, "conv_text": fmt_rate(f.conversion), "findings": n_open})
        key = {"code": lambda r: r["code"], "region": lambda r: (r["region"], r["code"]),
               "adds": lambda r: r["adds"], "conv": lambda r: (-1 if r["conv"] is None else r["conv"]),
               "findings": lambda r: r["findings"]}[sort]
        rows.sort(key=key, reverse=desc)
        pages = max(1, -(-len(rows) // PAGE_ROWS))
        page_no = min(max(1, page_no), pages)
        shown = rows[(page_no - 1) * PAGE_ROWS: page_no * PAGE_ROWS]
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
            totals={k: _totals(figs[k]) for k in PERIODS}, sold=sold, sold_yuan=yuan(sold_cents),
            findings=[{"store": f.store_code, "name": names.get(f.store_code, ""), "kind": KIND_ZH.get(f.kind, f.kind),
                       "age": _age(now - f.opened_at), "since": f.since.astimezone(self.tz)} for f in findings[:50]],
            findings_total=len(findings), slots=slots, running=running[:20], running_total=len(running),
            names=names, rows=shown, total_rows=len(rows), store_count=len(stores), page_no=page_no, pages=pages,
            link=link, sort_link=sort_link, sort=sort, desc=desc, q=q, region=region, regions=regions,
            only_findings=only_findings, yuan=yuan, tz=self.tz)

    # -- /admin/stores/{code} -------------------------------------------------------------
    def store(self, v: Viewer, code: str) -> HTMLResponse:
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
            label = f"{'群发' if r.mode == 'mass' else '提醒'}·{r.status}"
            cell[label] = cell.get(label, 0) + 1
        peak = max([1] + [d["adds"] for d in days])
        hour_peak = max([1] + [h["adds"] for h in hours] + [h["joins"] for h in hours])
        return self.render(
            "admin_store.html", v, store=st, region=self.region_of(code), days=days, peak=peak, hours=hours,
            hour_peak=hour_peak, today=today, history=history, kind_zh=KIND_ZH, tz=self.tz, groups=groups,
            scan_cap=SCAN_CAP, slot_rows=sorted(slots.items()), chains=chains, yuan=yuan, now=now, monday=monday)

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
        return pages.store(v, code)

    @r.get("/admin/calendar")
    def calendar(request: Request, store: str = "", week: str = ""):
        v = auth.viewer(request)
        if isinstance(v, Response):
            return v
        return pages.calendar(v, store or None, week or None)

    return r
