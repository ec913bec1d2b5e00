"""What a QR finding tells the store's clerks: the alert when it opens, the all-clear when it
clears. One app message per clerk per pass (WeCom keeps 30/min per member)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db.models import QrFinding, Store
from bot.funnel.recovery import queue_recovery
from bot.messaging.outbox import OutboxRepo
from bot.text import app_text

KIND_ZH = {"stalled": "有人加好友但没人进群", "full": "群已满，扫码进不了群", "gone": "群二维码已失效"}
KIND_ZH["no_clerk"] = "门店没有在职店员，店员码无人接待"   # bot.staff.roster: the last clerk left
KIND_ZH["reported"] = "顾客反馈扫码进不了群"                # bot.funnel.reports: from the /q/ page
REASON_ZH = {"error": "扫码提示系统错误或二维码失效", "full": "提示群已满", "other": "其他原因"}


def describe(f: QrFinding, store_name: str) -> str:
    e = f.evidence
    head = f"【二维码异常】{store_name}（{f.store_code}）：{KIND_ZH.get(f.kind, f.kind)}。"
    if f.kind == "stalled":
        return (head + f"\n最近有{e['adds']}位顾客扫店员码加了好友，但没有一人扫群码进群"
                f"（按本店以往约{e['p']:.0%}的进群率，这种情况偶然出现的概率不到{max(e['chance'], 1e-6):.2%}）。"
                "\n请马上用手机扫一下门店群二维码试试：失效或群满时，请新建一个群，再让运营执行 wecom-bot sync。")
    if f.kind == "reported":
        reasons = "、".join(f"{REASON_ZH.get(r, r)}{n}人" for r, n in sorted((e.get("reasons") or {}).items()))
        return (head + f"\n{e.get('reports', 0)}位刚加好友的顾客在进群页面上报：扫群二维码进不了群（{reasons}）。"
                "\n请马上用手机扫一下门店群二维码试试：失效或群满时，请新建一个群，再让运营执行 wecom-bot sync。")
    if f.kind == "full":
        return (head + f"\n群二维码后面的{e.get('groups', 0)}个群都已到200人扫码上限，且没有开启自动建群，新顾客扫码进不了群。"
                "\n请新建一个群（或开启自动建群），再让运营执行 wecom-bot sync。")
    return (head + f"\n{e.get('detail', '')}"
            "\n请让运营执行 wecom-bot sync 重建门店二维码。")


def notify(s: Session, clock: Clock, findings: list[QrFinding], *, resolved: bool = False) -> None:
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
    outbox = OutboxRepo(s, clock)
    tag = "clear" if resolved else "alert"
    for clerk, texts in per_clerk.items():
        ids = ",".join(str(f.id) for f in findings)
        outbox.add("app_message", f"qr_{tag}:{clerk}:{ids}", app_text(clerk, "\n\n".join(texts)))
    if resolved:   # the QR works again: bring back who it stranded (every all-clear passes here)
        queue_recovery(s, clock, findings)


