"""WeCom's own customer-group statistics in the simulated corp: `externalcontact/groupchat/statistic`
(by owner) and `statistic_group_by_day` (by day), computed from the sandbox's groups and members and
from the messages customers post (control plane: `member_speaks`). A mixin of WeComBackend: it uses
the backend's `groups`, `lock`, `now` and `rules` (the bounds and their sources: bot/sandbox/rules.py).

- Days are the Asia/Shanghai day starting at `day_begin_time` (rounded down), through the day of
  `day_end_time` (default: the begin day); only up to yesterday, back to 180 days, ≤ 30 days.
- new_chat_cnt: groups created in the span; chat_total: the owner's groups; chat_has_msg: groups with a
  message in the span; new_member_cnt: members (customers and staff, not the owner) still in the group
  who joined in the span; member_total: members of the owner's groups (the owner included);
  member_has_msg: members who posted in the span; msg_total: messages in the span.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from bot.clock import SHANGHAI
from bot.sandbox.errors import SandboxError

DAY = 86400
FIELDS = ("new_chat_cnt", "chat_total", "chat_has_msg", "new_member_cnt", "member_total", "member_has_msg",
          "msg_total", "migrate_trainee_chat_cnt")
ORDER_FIELDS = {1: "new_member_cnt", 2: "member_total", 3: "member_has_msg", 4: "msg_total"}


def day_start(ts: float) -> int:
    local = datetime.fromtimestamp(ts, SHANGHAI)
    return int(datetime.combine(local.date(), time(0), SHANGHAI).timestamp())


class StatsMixin:
    # -- state ------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.group_messages: list[tuple[str, str, float]] = []   # (chat_id, userid, at)

    # -- control plane ----------------------------------------------------------------------
    def member_speaks(self, chat_id: str, userid: str, count: int = 1) -> None:
        """A member posts `count` messages in a group now (no callback: WeCom sends none for these)."""
        with self.lock:
            if chat_id not in self.groups:
                raise SandboxError(40050)
            self.group_messages += [(chat_id, userid, self.now())] * count

    # -- endpoints --------------------------------------------------------------------------
    def _stat_span(self, body: dict) -> tuple[int, int]:
        """[begin, end) in timestamps, within WeCom's bounds."""
        try:
            begin = day_start(int(body["day_begin_time"]))
            end = day_start(int(body.get("day_end_time") or body["day_begin_time"]))
        except (KeyError, TypeError, ValueError):
            raise SandboxError(40058, "day_begin_time is required") from None
        today = day_start(self.now())
        r = self.rules
        if end < begin:
            raise SandboxError(r.stats_bounds_errcode, "day_end_time before day_begin_time")
        if end >= today:
            raise SandboxError(r.stats_bounds_errcode, "statistics are served up to yesterday only")
        if begin < today - r.stats_history_days * DAY:
            raise SandboxError(r.stats_bounds_errcode, f"only the last {r.stats_history_days} days are kept")
        if (end - begin) // DAY + 1 > r.stats_span_days:
            raise SandboxError(r.stats_bounds_errcode, f"the span is at most {r.stats_span_days} days")
        end_local = datetime.fromtimestamp(end, SHANGHAI).date() + timedelta(days=1)
        return begin, int(datetime.combine(end_local, time(0), SHANGHAI).timestamp())

    def _stat_owners(self, body: dict) -> list[str] | None:
        owners = (body.get("owner_filter") or {}).get("userid_list")
        if owners is not None and len(owners) > self.rules.stats_owner_max:
            raise SandboxError(self.rules.stats_bounds_errcode,
                               f"owner_filter.userid_list over {self.rules.stats_owner_max}")
        return owners

    def _figures(self, groups: list, since: float, until: float) -> dict[str, int]:
        chats = {g.chat_id for g in groups}
        said = [(c, u) for c, u, at in self.group_messages if c in chats and since <= at < until]
        return {
            "new_chat_cnt": sum(since <= g.create_time < until for g in groups),
            "chat_total": len(groups),
            "chat_has_msg": len({c for c, _ in said}),
            "new_member_cnt": sum(since <= m.join_time < until and m.userid != g.owner
                                  for g in groups for m in g.members),
            "member_total": sum(len(g.members) for g in groups),
            "member_has_msg": len(set(said)),
            "msg_total": len(said),
            "migrate_trainee_chat_cnt": 0,
        }

    def groupchat_statistic(self, body: dict) -> dict:
        since, until = self._stat_span(body)
        owners = self._stat_owners(body)
        limit = int(body.get("limit") or 500)
        if not 1 <= limit <= self.rules.stats_limit_max:
            raise SandboxError(40058, f"limit must be 1-{self.rules.stats_limit_max}")
        by_owner: dict[str, list] = {}
        for g in self.groups.values():
            if (owners is None or g.owner in owners) and g.create_time < until:
                by_owner.setdefault(g.owner, []).append(g)
        items = [{"owner": o, "data": self._figures(gs, since, until)} for o, gs in by_owner.items()]
        key = ORDER_FIELDS.get(int(body.get("order_by") or 1), "new_member_cnt")
        items.sort(key=lambda it: (it["data"][key], it["owner"]), reverse=not int(body.get("order_asc") or 0))
        offset = int(body.get("offset") or 0)
        page = items[offset:offset + limit]
        nxt = offset + limit if offset + limit < len(items) else 0
        return {"total": len(items), "next_offset": nxt, "items": page}

    def groupchat_statistic_group_by_day(self, body: dict) -> dict:
        since, until = self._stat_span(body)
        owners = self._stat_owners(body)
        items = []
        day = since
        while day < until:
            nxt = day_start(day + DAY + 3600)
            groups = [g for g in self.groups.values() if (owners is None or g.owner in owners) and g.create_time < nxt]
            items.append({"stat_time": day, "data": self._figures(groups, day, nxt)})
            day = nxt
        return {"items": items}


def _h(name):
    return lambda backend, body: getattr(backend, name)(body)


STATS_ENDPOINTS = {
    "externalcontact/groupchat/statistic": _h("groupchat_statistic"),
    "externalcontact/groupchat/statistic_group_by_day": _h("groupchat_statistic_group_by_day"),
}
