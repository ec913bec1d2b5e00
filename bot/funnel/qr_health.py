"""QR health: is a store's QR funnel broken? (DESIGN §4, the funnel issue)

- stalled: adds keep coming through the store QR but nobody joins. With the store's expected
  add→join conversion p, n adds since the last join (inside the window) that produced no join
  have probability (1-p)^n; flag when that is below alpha and n ≥ min_adds. p is the store's own
  rate before the window, shrunk toward the chain-wide rate (a Beta prior worth PRIOR_WEIGHT adds),
  never below min_rate: a store whose QR never worked is still flagged, by the prior and the floor.
- full: every group behind the join way is at the 200 scan-join cap and the join way cannot
  create a room.
- gone: the join way or contact way no longer exists at WeCom, or the store has none.

A finding alerts the store's clerks once (one message per clerk per run); when it clears, a short
all-clear. Full and gone are repaired by `sync`'s logic where possible, and the message says so.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from bot.config import QrHealthSettings
from bot.config import Store as StoreConfig
from bot.db.models import FunnelFact, GroupChat, QrFinding, Store
from bot.outbox import OutboxRepo
from bot.text import app_text
from bot.clock import Clock

log = logging.getLogger(__name__)

PRIOR_WEIGHT = 30          # the chain-wide rate counts as this many adds of the store's own
DEFAULT_CHAIN_RATE = 0.6   # before the chain has history
BASELINE = timedelta(days=7)
SCAN_JOIN_LIMIT = 200

KIND_ZH = {"stalled": "有人加好友但没人进群", "full": "群已满，扫码进不了群", "gone": "群二维码已失效"}


# -- the stalled rule (pure: the benchmark runs the same code) ------------------------------

def expected_conversion(store_adds: int, store_converted: int, chain_rate: float | None,
                        floor: float) -> float:
    prior = chain_rate if chain_rate is not None else DEFAULT_CHAIN_RATE
    p = (store_converted + PRIOR_WEIGHT * prior) / (store_adds + PRIOR_WEIGHT)
    return max(floor, min(p, 0.99))


@dataclass(frozen=True)
class StalledVerdict:
    stalled: bool
    adds: int                 # adds since the last join, inside the window
    p: float
    chance: float             # (1-p)^adds: how likely a healthy QR shows this run
    since: datetime | None    # the first of those adds
    looks: float = 1.0        # runs a healthy day starts (adds/day × p): chances to see one by luck


def stalled_verdict(add_times: list[datetime], p: float, cfg: QrHealthSettings,
                    adds_per_day: float = 0.0) -> StalledVerdict:
    """add_times: the store's adds after its last QR join and inside the window, oldest first.

    The rule is looked at on every add, so a healthy store meets a long run of non-joins by chance
    more often than (1-p)^n says: it starts about adds_per_day × p fresh runs a day. Flag when the
    expected number of such runs a healthy day would show, looks × (1-p)^n, is below alpha: alpha
    is then the chance that a healthy store is flagged on a given day."""
    n = len(add_times)
    chance = (1 - p) ** n
    looks = max(1.0, adds_per_day * p)
    return StalledVerdict(n >= cfg.min_adds and looks * chance < cfg.alpha, n, p, chance,
                          add_times[0] if add_times else None, looks)


# -- reading the facts ----------------------------------------------------------------------

def conversion_counts(s: Session, since: datetime, until: datetime, store_code: str | None = None) -> tuple[int, int]:
    """(adds, adds followed by a QR join at the same store) with the add in [since, until)."""
    j = aliased(FunnelFact)
    joined = exists().where(and_(j.kind == "join", j.external_userid == FunnelFact.external_userid,
                                 j.store_code == FunnelFact.store_code, j.at >= FunnelFact.at))
    q = select(func.count(), func.count().filter(joined)).where(
        FunnelFact.kind == "add", FunnelFact.store_code.is_not(None), FunnelFact.at >= since, FunnelFact.at < until)
    if store_code:
        q = q.where(FunnelFact.store_code == store_code)
    adds, converted = s.execute(q).one()
    return adds or 0, converted or 0


def evaluate_stalled(s: Session, store_code: str, now: datetime, cfg: QrHealthSettings,
                     chain_rate: float | None) -> StalledVerdict:
    """Adds count once they are older than the grace: a customer needs a minute to scan the
    group QR of the welcome, and a burst of adds is handled before its joins are read."""
    window_start = now - timedelta(minutes=cfg.window_minutes)
    ripe = now - timedelta(minutes=cfg.grace_minutes)
    last_join = s.scalar(select(func.max(FunnelFact.at)).where(FunnelFact.kind == "join",
                                                               FunnelFact.store_code == store_code))
    start = max(window_start, last_join) if last_join else window_start
    adds = list(s.scalars(select(FunnelFact.at).where(FunnelFact.kind == "add", FunnelFact.store_code == store_code,
                                                      FunnelFact.at > start, FunnelFact.at <= ripe)
                          .order_by(FunnelFact.at)))
    own_adds, own_converted = conversion_counts(s, window_start - BASELINE, window_start, store_code)
    return stalled_verdict(adds, expected_conversion(own_adds, own_converted, chain_rate, cfg.min_rate), cfg,
                           adds_per_day=own_adds / BASELINE.days)


def chain_rate(s: Session, now: datetime, cfg: QrHealthSettings) -> float | None:
    window_start = now - timedelta(minutes=cfg.window_minutes)
    adds, converted = conversion_counts(s, window_start - BASELINE, window_start)
    return converted / adds if adds >= 50 else None


# -- findings and messages ------------------------------------------------------------------

def open_findings(s: Session, store_codes: list[str] | None = None) -> list[QrFinding]:
    q = select(QrFinding).where(QrFinding.open_key.is_not(None)).order_by(QrFinding.opened_at)
    if store_codes is not None:
        q = q.where(QrFinding.store_code.in_(store_codes))
    return list(s.scalars(q))


def describe(f: QrFinding, store_name: str) -> str:
    e = f.evidence
    head = f"【二维码异常】{store_name}（{f.store_code}）：{KIND_ZH.get(f.kind, f.kind)}。"
    if f.kind == "stalled":
        return (head + f"\n最近有{e['adds']}位顾客扫店员码加了好友，但没有一人扫群码进群"
                f"（按本店以往约{e['p']:.0%}的进群率，这种情况偶然出现的概率不到{max(e['chance'], 1e-6):.2%}）。"
                "\n请马上用手机扫一下门店群二维码试试：失效或群满时，请新建一个群，再让运营执行 wecom-bot sync。")
    if f.kind == "full":
        return (head + f"\n群二维码后面的{e.get('groups', 0)}个群都已到200人扫码上限，且没有开启自动建群，新顾客扫码进不了群。"
                "\n请新建一个群（或开启自动建群），再让运营执行 wecom-bot sync。")
    return (head + f"\n{e.get('detail', '')}"
            "\n请让运营执行 wecom-bot sync 重建门店二维码。")


class QrHealth:
    """Opens, repairs and resolves findings; queues the clerk messages in the caller's transaction."""

    def __init__(self, clock: Clock, cfg: QrHealthSettings):
        self.clock = clock
        self.cfg = cfg
        self._chain_rate: tuple[datetime, float | None] | None = None

    def chain_rate(self, s: Session, now: datetime) -> float | None:
        if self._chain_rate is None or now - self._chain_rate[0] > timedelta(minutes=10):
            self._chain_rate = (now, chain_rate(s, now, self.cfg))
        return self._chain_rate[1]

    # stalled, on every add and on schedule
    def check_stalled(self, s: Session, store_code: str, now: datetime) -> QrFinding | None:
        v = evaluate_stalled(s, store_code, now, self.cfg, self.chain_rate(s, now))
        if v.stalled:
            return self.open(s, store_code, "stalled", v.since or now,
                             {"adds": v.adds, "p": round(v.p, 3), "chance": v.chance,
                              "window_minutes": self.cfg.window_minutes})
        return None

    def open(self, s: Session, store_code: str, kind: str, since: datetime, evidence: dict) -> QrFinding | None:
        """A new finding, or None when the same one is already open (no second alert)."""
        now = self.clock.now()
        try:
            with s.begin_nested():
                f = QrFinding(store_code=store_code, kind=kind, open_key=f"{store_code}:{kind}", since=since,
                              evidence=evidence, opened_at=now)
                s.add(f)
                s.flush()
        except IntegrityError:
            return None
        log.warning("QR finding %s at %s: %s", kind, store_code, evidence)
        return f

    def resolve(self, s: Session, store_code: str, kinds: tuple[str, ...], note: str | None = None) -> list[QrFinding]:
        found = [f for f in open_findings(s, [store_code]) if f.kind in kinds]
        for f in found:
            f.open_key, f.resolved_at = None, self.clock.now()
            if note:
                f.repaired = note[:200]
        return found

    def on_joins(self, s: Session, joins: list[FunnelFact], now: datetime) -> None:
        """A QR join clears the store's stalled finding, with an all-clear to its clerks."""
        for store_code in {j.store_code for j in joins if j.kind == "join" and j.store_code}:
            cleared = self.resolve(s, store_code, ("stalled",))
            if cleared:
                self.notify(s, cleared, resolved=True)

    def notify(self, s: Session, findings: list[QrFinding], *, resolved: bool = False) -> None:
        """One app message per clerk for these findings (WeCom keeps 30/min per member)."""
        if not findings:
            return
        stores = {st.code: st for st in s.scalars(select(Store).where(
            Store.code.in_({f.store_code for f in findings})))}
        per_clerk: dict[str, list[str]] = defaultdict(list)
        for f in findings:
            st = stores.get(f.store_code)
            if st is None:
                continue
            if resolved:
                text = f"【已恢复】{st.name}（{st.code}）：{KIND_ZH.get(f.kind, f.kind)}的问题已解除。" + \
                       (f"{f.repaired}" if f.repaired else "顾客又能正常扫码进群了。")
            else:
                text = describe(f, st.name)
            for clerk in st.clerks:
                per_clerk[clerk].append(text)
        outbox = OutboxRepo(s, self.clock)
        tag = "clear" if resolved else "alert"
        for clerk, texts in per_clerk.items():
            ids = ",".join(str(f.id) for f in findings)
            outbox.add("send", f"qr_{tag}:{clerk}:{ids}", app_text(clerk, "\n\n".join(texts)))


def store_config(row: Store) -> StoreConfig:
    return StoreConfig(code=row.code, name=row.name, clerks=list(row.clerks), benefit=row.benefit)


COUNT_STALE = timedelta(hours=1)


def refresh_counts(c, chat_ids: list[str], now: datetime) -> dict[str, int]:
    """Member counts of a join way's groups: stored ones, read again from WeCom when more than an
    hour old or near the scan cap (joins through callbacks keep them current in between)."""
    from bot.funnel.facts import apply_member_list

    with c.sessions() as s:
        rows = {g.chat_id: g for g in s.scalars(select(GroupChat).where(GroupChat.chat_id.in_(chat_ids)))}
        stale = [ch for ch in chat_ids if ch not in rows or rows[ch].synced_at is None
                 or rows[ch].synced_at < now - COUNT_STALE or rows[ch].member_count >= SCAN_JOIN_LIMIT - 10]
    for chat_id in stale:
        info = c.client.external_contact_group_chat.get(chat_id)
        with c.sessions.begin() as s:
            apply_member_list(s, info, now)
    with c.sessions() as s:
        return dict(s.execute(select(GroupChat.chat_id, GroupChat.member_count).where(
            GroupChat.chat_id.in_(chat_ids))).all())


def check_wecom_side(c, store_codes: list[str] | None = None) -> dict[str, int]:
    """The scheduled / `qr check` pass: stalled for every store; full and gone by reading the
    join way and contact way at WeCom; repair what sync can repair. Returns counts."""
    from bot.wecom.client import WeComError
    from bot.provisioning import CONFIG_GONE

    health: QrHealth = c.qr_health
    now = c.clock.now()
    counts = {"stores": 0, "opened": 0, "resolved": 0, "repaired": 0}
    with c.sessions() as s:
        stores = list(s.scalars(select(Store).where(Store.code.in_(store_codes)) if store_codes else select(Store)))
    for st in stores:
        counts["stores"] += 1
        problems: dict[str, tuple[datetime, dict]] = {}
        detail = None
        if not st.join_way_config_id or not st.contact_way_config_id:
            detail = "门店还没有" + ("群二维码" if not st.join_way_config_id else "店员二维码")
        else:
            try:
                way = c.client.join_way.get_join_way(st.join_way_config_id)
                c.client.external_contact.get_contact_way(st.contact_way_config_id)
            except WeComError as e:
                if e.errcode not in CONFIG_GONE:
                    log.warning("qr check %s: %s", st.code, e)
                    continue
                detail = f"企业微信找不到门店的二维码配置（{e.errcode}）"
                way = None
            if way is not None:
                chats = way.get("chat_id_list") or []
                counts_by_chat = refresh_counts(c, chats, now)
                full = chats and all(counts_by_chat.get(ch, 0) >= SCAN_JOIN_LIMIT for ch in chats)
                if full and not int(way.get("auto_create_room", 0)):
                    problems["full"] = (now, {"groups": len(chats), "auto_create_room": 0})
        if detail:
            problems["gone"] = (now, {"detail": detail})
        repaired_note = None
        if problems:
            # sync's logic swaps in groups with room, turns auto-create back on, recreates configs
            result = c.provisioner().sync_store(store_config(st))
            if result.changes and not result.error:
                repaired_note = "已自动修复：" + "；".join(result.changes) + "。"
                counts["repaired"] += 1
        with c.sessions.begin() as s:
            opened, cleared = [], []
            for kind in ("full", "gone"):
                if kind in problems and not repaired_note:
                    f = health.open(s, st.code, kind, *problems[kind])
                    if f:
                        opened.append(f)
                else:
                    cleared += health.resolve(s, st.code, (kind,), repaired_note)
            if repaired_note and problems:
                # say what was wrong and that it is fixed, in one message
                for kind, (since, evidence) in problems.items():
                    f = QrFinding(store_code=st.code, kind=kind, since=since, evidence=evidence, opened_at=now,
                                  resolved_at=now, repaired=repaired_note[:200])
                    s.add(f)
                    s.flush()
                    cleared.append(f)
            f = health.check_stalled(s, st.code, now)
            if f:
                opened.append(f)
            health.notify(s, opened)
            health.notify(s, cleared, resolved=True)
            counts["opened"] += len(opened)
            counts["resolved"] += len(cleared)
    return counts


def on_contact_added_check(evt, uow, stored, qr_health: QrHealth) -> list:
    """After each add through a store QR: is the store stalled now?"""
    store = uow.stores.by_code(evt.state)
    if store is None:
        return []
    f = qr_health.check_stalled(uow.session, store.code, stored.received_at)
    if f:
        qr_health.notify(uow.session, [f])
    return []


__all__ = ["QrHealth", "check_wecom_side", "evaluate_stalled", "expected_conversion", "stalled_verdict",
           "open_findings"]
