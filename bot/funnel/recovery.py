"""Bringing back the customers a broken group QR stranded (issue 14, item 3).

When a store's QR finding clears, the customers who added its clerks while the finding was open
(from the first add of its evidence to the all-clear) and have not joined a store group since get
the working group QR again: one single-chat mass message per clerk (add_msg_template, chat_type
single, sender = the clerk they added, external_userid = exactly those customers, ≤ 10,000 a call),
which the clerk confirms in WeCom like any mass message. It counts against each customer's receive
cap at WeCom like any mass message; a customer over it is in the task's send result (status 3).
Never twice for one finding: the outbox key is (finding, clerk) and the call reconciles a lost answer.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased

from bot.clock import Clock
from bot.db.models import FunnelFact, QrFinding, Store
from bot.messaging.outbox import OutboxRepo
from bot.text import app_text

KIND = "recovery_message"
MAX_CUSTOMERS = 10_000   # add_msg_template: 「最多可传入1万个客户」 (doc 92135 via SDK text)

TEXT = ("您好，抱歉！您加我们的时候，门店群的二维码出了问题，没能进群。现在已经修好了："
        "长按下面的二维码就能进「{store}」福利群，每天10点、12点、16点、20点群里有好价。")


def stranded(s: Session, f: QrFinding, until: datetime) -> dict[str, list[str]]:
    """clerk → customers who added them at the store while `f` was open and have not joined since."""
    joined = aliased(FunnelFact)
    rows = s.execute(select(FunnelFact.userid, FunnelFact.external_userid).where(
        FunnelFact.kind == "add", FunnelFact.store_code == f.store_code,
        FunnelFact.at >= f.since, FunnelFact.at <= until, FunnelFact.userid.is_not(None),
        ~exists().where(and_(joined.external_userid == FunnelFact.external_userid,
                             joined.kind.in_(("join", "join_other")), joined.at >= FunnelFact.at)))
        .order_by(FunnelFact.at)).all()
    out: dict[str, list[str]] = defaultdict(list)
    for clerk, ext in rows:
        if ext not in out[clerk]:
            out[clerk].append(ext)
    return out


def queue_recovery(s: Session, clock: Clock, findings: list[QrFinding]) -> int:
    """For each cleared finding, the clerks' recovery messages (outbox) and a note to each clerk."""
    outbox = OutboxRepo(s, clock)
    queued = 0
    for f in findings:
        st = s.get(Store, f.store_code)
        if st is None or not st.join_way_config_id:
            continue
        for clerk, customers in stranded(s, f, f.resolved_at or clock.now()).items():
            for i in range(0, len(customers), MAX_CUSTOMERS):
                batch = customers[i:i + MAX_CUSTOMERS]
                if outbox.add(KIND, f"recovery:{f.id}:{clerk}:{i // MAX_CUSTOMERS}",
                              {"chat_type": "single", "sender": clerk, "store_code": st.code,
                               "join_way_config_id": st.join_way_config_id, "external_userids": batch,
                               "text": TEXT.format(store=st.name), "finding_id": f.id}):
                    queued += 1
                    outbox.add("app_message", f"recovery_note:{f.id}:{clerk}:{i // MAX_CUSTOMERS}", app_text(
                        clerk, f"【请确认群发】{st.name}的群二维码修好了。有{len(batch)}位顾客在二维码出问题期间加了你、"
                               "还没进群：已为你准备好一条带群二维码的邀请，请在企业微信「客户联系 → 群发助手」里确认发送。"))
    return queued
