"""Who serves each store now: a clerk WeCom says is gone (the change_contact callback, or `sync`
reading user/get) leaves the store's contact way at once and their customers and groups are handed
to a successor; a clerk who is back returns to the QR; a store left with no clerk is a `no_clerk`
finding and ops are told. `sync` also lists the on-job handovers that are waiting for
`wecom-bot handover … --apply` (a clerk removed from a store's config but still employed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.config import Settings, Store as StoreConfig
from bot.db.models import FunnelFact, GroupChat, Store
from bot.funnel import alerts
from bot.funnel.findings import QrHealth
from bot.messaging.outbox import OutboxRepo
from bot.staff import handover
from bot.staff.ops import batch_key, tell_ops
from bot.wecom import errcodes
from bot.wecom.api.staff import STATUS_LEFT
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

NO_CLERK = "no_clerk"
UPDATE_CONTACT_WAY = "update_contact_way"


@dataclass
class StaffReport:
    """What `sync` found about the staff (printed by the CLI)."""
    gone: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)      # user/get failed: left as they were
    pending: list[str] = field(default_factory=list)      # on-job handovers waiting for --apply
    ops_lines: list[str] = field(default_factory=list)

    def effective(self, stores: Sequence[StoreConfig]) -> list[StoreConfig]:
        """The stores with only the clerks still employed (a store with none keeps an empty list)."""
        return [st.model_copy(update={"clerks": [c for c in st.clerks if c not in self.gone]})
                if any(c in self.gone for c in st.clerks) else st for st in stores]

    def lines(self) -> list[str]:
        out = [f"clerk gone at WeCom: {u}" for u in self.gone]
        out += [f"clerk not checked (user/get failed): {u}" for u in self.unknown]
        out += [f"pending handover: {p}" for p in self.pending]
        return out


class Roster:
    def __init__(self, settings: Settings, clock: Clock, qr_health: QrHealth):
        self.settings = settings
        self.clock = clock
        self.qr_health = qr_health

    def config_store(self, code: str) -> StoreConfig | None:
        return next((st for st in self.settings.stores if st.code == code), None)

    # -- a clerk leaves -----------------------------------------------------------------------
    def clerk_gone(self, s: Session, userid: str, now: datetime) -> list[str]:
        """Take `userid` off every store that lists them and plan their handover; the ops lines."""
        lines: list[str] = []
        outbox = OutboxRepo(s, self.clock)
        stores = [st for st in s.scalars(select(Store).where(Store.closed_at.is_(None)).order_by(Store.code))
                  if userid in (st.clerks or [])]   # a pruned store has no customers or groups to hand over
        codes = [st.code for st in stores]
        for st in stores:
            QrHealth.lock(s, st.code)
            remaining = [c for c in st.clerks if c != userid]
            st.clerks = remaining
            if remaining and st.contact_way_config_id:
                outbox.add(UPDATE_CONTACT_WAY, f"staff:{userid}:{st.code}:left:{handover.stamp(now)}",
                           {"store_code": st.code, "config_id": st.contact_way_config_id})
            if not remaining:
                f = self.qr_health.open(s, st.code, NO_CLERK, now, {"clerk": userid}, seen_at=now)
                if f:
                    lines.append(f"【门店无店员】{st.name}（{st.code}）：店员 {userid} 已离职，门店已没有店员。"
                                 "店员码暂时无人接待，客户和客户群等有新店员后再交接。"
                                 "请在门店配置里补上店员，再执行 wecom-bot sync。")
            cfg = self.config_store(st.code)
            hid = f"{handover.resigned_hid(userid, st.code)}:{now:%Y%m%d}"
            outbox.add(handover.PLAN, f"{hid}:plan", {
                "hid": hid, "mode": "resigned", "handover_userid": userid, "store_code": st.code,
                "successor": cfg.successor if cfg else None, "stores": codes})
        if not stores:
            log.info("staff: %s is gone and serves no store here", userid)
        else:
            log.warning("staff: %s is gone: off the QR of %s, handover planned", userid, ", ".join(codes))
        return lines

    # -- a clerk is back (create_user, or sync finds them again) ------------------------------
    def clerk_back(self, s: Session, userid: str, now: datetime) -> list[str]:
        lines: list[str] = []
        outbox = OutboxRepo(s, self.clock)
        for cfg in self.settings.stores:
            if userid not in cfg.clerks:
                continue
            st = s.get(Store, cfg.code)
            if st is None or userid in (st.clerks or []):
                continue
            QrHealth.lock(s, st.code)
            st.clerks = [c for c in cfg.clerks if c in set(st.clerks or []) | {userid}]
            if st.contact_way_config_id:
                outbox.add(UPDATE_CONTACT_WAY, f"staff:{userid}:{st.code}:back:{handover.stamp(now)}",
                           {"store_code": st.code, "config_id": st.contact_way_config_id})
            lines += self.store_staffed(s, st)
        return lines

    def store_staffed(self, s: Session, st: Store) -> list[str]:
        """The no_clerk all-clear, to the store's clerks and to ops."""
        cleared = self.qr_health.resolve(s, st.code, (NO_CLERK,), f"店员：{'、'.join(st.clerks)}")
        if not cleared:
            return []
        alerts.notify(s, self.clock, cleared, resolved=True)
        return [f"【已恢复】{st.name}（{st.code}）又有店员了：{'、'.join(st.clerks)}。"]

    def on_change(self, s: Session, change_type: str, userid: str, now: datetime, *, status: int | None = None,
                  new_userid: str | None = None) -> list[str]:
        if change_type == "delete_user" or (change_type == "update_user" and status == STATUS_LEFT):
            return self.clerk_gone(s, userid, now)
        if change_type == "update_user" and new_userid and new_userid != userid:
            if any(userid in st.clerks for st in self.settings.stores):
                return [f"【店员帐号变更】店员 {userid} 的企业微信帐号改成了 {new_userid}。"
                        "请把门店配置里的店员改成新帐号，再执行 wecom-bot sync。"]
            return []
        if change_type in ("create_user", "update_user"):
            return self.clerk_back(s, userid, now)
        return []

    # -- sync ---------------------------------------------------------------------------------
    def check(self, client: WeComClient, userids: Sequence[str]) -> tuple[list[str], list[str]]:
        """(gone, unknown): user/get for each clerk. 60111 or status 5 is gone; any other failure
        leaves the clerk as configured (never hand customers over on a guess)."""
        gone, unknown = [], []
        for u in userids:
            try:
                if int(client.staff.get(u).get("status") or 1) == STATUS_LEFT:
                    gone.append(u)
            except WeComError as e:
                if e.errcode == errcodes.USER_NOT_FOUND:
                    gone.append(u)
                else:
                    log.warning("staff: user/get %s failed (%s): left as configured", u, e)
                    unknown.append(u)
        return gone, unknown

    def reconcile(self, sessions: sessionmaker[Session], client: WeComClient,
                  stores: Sequence[StoreConfig]) -> StaffReport:
        """The staff step of `sync`, before the stores: who is gone, their handovers planned."""
        report = StaffReport()
        userids = sorted({c for st in stores for c in st.clerks})
        report.gone, report.unknown = self.check(client, userids)
        now = self.clock.now()
        with sessions.begin() as s:
            # read before the stores sync: that reassigns a moved clerk's groups by the new config
            report.pending = self.pending_onjob(s, stores, set(report.gone))
            for u in report.gone:
                report.ops_lines += self.clerk_gone(s, u, now)
            for cfg in stores:   # a store that has a clerk again (config edited, clerk back)
                st = s.get(Store, cfg.code)
                if st is not None and [c for c in cfg.clerks if c not in report.gone]:
                    st.clerks = [c for c in cfg.clerks if c not in report.gone]
                    report.ops_lines += self.store_staffed(s, st)
                elif st is not None:
                    st.clerks = []
        return report

    def pending_onjob(self, s: Session, stores: Sequence[StoreConfig], gone: set[str]) -> list[str]:
        """Clerks still employed who no longer serve a store but keep its groups or customers: each waits
        for `wecom-bot handover CLERK --store CODE --apply` (ops decide: transfers are counted)."""
        cfgs = {st.code: st for st in stores}
        configured = {c for st in stores for c in st.clerks}
        found: dict[tuple[str, str], list[int]] = {}
        for owner, code, n in s.execute(select(GroupChat.owner, GroupChat.store_code, func.count())
                                        .group_by(GroupChat.owner, GroupChat.store_code)):
            found.setdefault((owner, code), [0, 0])[0] += n
        for userid, code, n in s.execute(select(FunnelFact.userid, FunnelFact.store_code,
                                                func.count(func.distinct(FunnelFact.external_userid)))
                                         .where(FunnelFact.kind == "add")
                                         .group_by(FunnelFact.userid, FunnelFact.store_code)):
            found.setdefault((userid, code), [0, 0])[1] += n
        out = []
        for (userid, code), (chats, customers) in sorted(found.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")):
            cfg = cfgs.get(code)
            if cfg is None or not userid or userid in gone or userid in cfg.clerks:
                continue
            busy = handover.onjob_in_flight(s, userid, code)
            if busy and not chats:
                continue
            where = "" if userid in configured else "（已不在任何门店）"
            out.append(f"{userid} @ {code}{where}: {chats} group(s), {customers} customer(s) → "
                       f"wecom-bot handover {userid} --store {code} [--apply]")
        return out

    def after_sync(self, sessions: sessionmaker[Session], stores: Sequence[StoreConfig], report: StaffReport) -> None:
        """The one ops message of this run: gone clerks' stores, clerks in no store."""
        configured = {c for st in stores for c in st.clerks}
        for line in report.pending:
            userid = line.split(" @ ", 1)[0]
            if userid not in configured:
                report.ops_lines.append(f"【店员不在任何门店】{userid} 已不在任何门店的店员名单里，但还有客户或客户群："
                                        f"{line}。请确认后执行 wecom-bot handover 交给门店店员。")
        with sessions.begin() as s:
            tell_ops(s, self.clock, self.settings, report.ops_lines, f"sync:{handover.stamp(self.clock.now())}")

    def tell(self, s: Session, lines: list[str], now: datetime) -> None:
        """Lines from callbacks and outbox settles: batched per 10 minutes, sent a minute after the first."""
        tell_ops(s, self.clock, self.settings, lines, batch_key("staff", now), delay_seconds=60)
