"""Staff turnover in the simulated corp: members who leave, and the customer and group transfers
(在职继承 / 离职继承) with WeCom's rules. A mixin of WeComBackend: it uses the backend's `clerks`,
`external` (customers and whom they follow), `groups`, `lock`, `now` and `rules`.

- Deleting a member (control plane: `delete_user`) takes them off `clerks`; their customers stay
  theirs, unassigned (get_unassigned_list), and their groups keep them as owner (离职待继承) until
  transferred; user/get answers 60111, or status 5 when the record is kept (`keep_record`).
- A customer transfer waits for the takeover (`rules.transfer_takeover_seconds`, 24 h): status 2
  until then, 1 after, 3 if the customer refused in between (control plane), 4 if the successor
  was at `rules.customer_limit` when the takeover fell due. Progress is computed on the sandbox
  clock whenever state is read, like moto's time-based transitions.
- Group transfers change the owner at once (`self.groups[chat].owner`), as WeCom's do.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from bot.sandbox.errors import SandboxError

DAY = 86400


@dataclass
class Transfer:
    """One customer handed from one member to another (resigned or on-job)."""
    handover: str
    takeover: str
    external_userid: str
    mode: str                 # resigned | onjob
    started_at: float
    status: int = 2           # 1 接替完毕, 2 等待接替, 3 客户拒绝, 4 接替成员客户达到上限
    takeover_time: int = 0


class StaffMixin:
    # -- state ------------------------------------------------------------------------------
    def reset_staff(self) -> None:
        self.resigned: dict[str, float] = {}            # userid → dimission time
        self.kept_records: set[str] = set()             # resigned users user/get still knows (status 5)
        self.transfers: list[Transfer] = []
        self.group_transfers: list[dict] = []           # {chat_id, from, to, mode, at}
        self.user_names: dict[str, str] = {}

    # -- control plane ----------------------------------------------------------------------
    def delete_user(self, userid: str, *, keep_record: bool = False) -> dict:
        """An admin deletes a member (or marks them 退出企业 with `keep_record`): the change_contact
        delete_user fields WeCom pushes (通讯录变更事件)."""
        with self.lock:
            if userid not in self.clerks:
                raise SandboxError(60111)
            self.clerks.discard(userid)
            self.admin_welcome.discard(userid)
            self.resigned[userid] = self.now()
            if keep_record:
                self.kept_records.add(userid)
            return {"ChangeType": "delete_user", "UserID": userid}

    def create_user(self, userid: str, name: str | None = None) -> dict:
        """A member joins (or returns): the change_contact create_user fields."""
        with self.lock:
            self.clerks.add(userid)
            self.resigned.pop(userid, None)
            self.kept_records.discard(userid)
            if name:
                self.user_names[userid] = name
            return {"ChangeType": "create_user", "UserID": userid}

    def customer_refuses_transfer(self, external_userid: str) -> dict:
        """The customer taps 「暂不添加」 on a pending transfer: the transfer_fail fields (UserID is the
        takeover member, doc 96361)."""
        with self.lock:
            self._advance_transfers()
            t = next((t for t in reversed(self.transfers)
                      if t.external_userid == external_userid and t.status == 2), None)
            if t is None:
                raise SandboxError(40058, "no pending transfer for this customer")
            t.status = 3
            return {"ChangeType": "transfer_fail", "UserID": t.takeover, "ExternalUserID": external_userid,
                    "FailReason": "customer_refused"}

    def add_customers(self, userid: str, count: int, state: str | None = None) -> list[str]:
        """Seed `count` customers of a member (added some time ago; no callback)."""
        with self.lock:
            out = []
            for _ in range(count):
                ext = self._new_external()
                ext["follow"][userid] = state or ""
                out.append(ext["external_userid"])
            return out

    def customers_of(self, userid: str) -> list[str]:
        with self.lock:
            self._advance_transfers()
            return sorted(e for e, x in self.external.items() if userid in x["follow"])

    # -- the takeover clock -----------------------------------------------------------------
    def _advance_transfers(self) -> None:
        now = self.now()
        for t in self.transfers:
            if t.status != 2 or now < t.started_at + self.rules.transfer_takeover_seconds:
                continue
            follow = self.external.get(t.external_userid, {}).get("follow", {})
            if len(self._customers(t.takeover)) >= self.rules.customer_limit:
                t.status = 4
                continue
            follow[t.takeover] = follow.pop(t.handover, "")
            t.status, t.takeover_time = 1, int(t.started_at + self.rules.transfer_takeover_seconds)

    def _customers(self, userid: str) -> list[str]:
        return [e for e, x in self.external.items() if userid in x["follow"]]

    def _pending(self, ext: str) -> Transfer | None:
        return next((t for t in self.transfers if t.external_userid == ext and t.status == 2), None)

    # -- endpoints --------------------------------------------------------------------------
    def user_get(self, body: dict) -> dict:
        userid = body.get("userid") or ""
        if userid in self.clerks:
            return {"userid": userid, "name": self.user_names.get(userid, userid), "status": 1}
        if userid in self.kept_records:
            return {"userid": userid, "name": self.user_names.get(userid, userid), "status": 5}
        raise SandboxError(60111)

    def externalcontact_list(self, body: dict) -> dict:
        userid = body.get("userid") or ""
        if userid not in self.clerks and userid not in self.resigned:
            raise SandboxError(40003)
        self._advance_transfers()
        mine = sorted(self._customers(userid))
        if not mine:
            raise SandboxError(84061)
        return {"external_userid": mine}

    def get_unassigned_list(self, body: dict) -> dict:
        self._advance_transfers()
        size = int(body.get("page_size") or 1000)
        if not 1 <= size <= self.rules.unassigned_page_max:
            raise SandboxError(40058, "page_size 1..1000")
        info = []
        for userid, at in sorted(self.resigned.items()):
            for ext in sorted(self._customers(userid)):
                t = self._pending(ext)
                if t is None or t.handover != userid:
                    info.append({"handover_userid": userid, "external_userid": ext, "dimission_time": int(at)})
        start = int(body.get("cursor") or 0)
        page = info[start:start + size]
        last = start + size >= len(info)
        return {"info": page, "is_last": last, "next_cursor": "" if last else str(start + size)}

    def _transfer_customers(self, body: dict, mode: str) -> dict:
        self._advance_transfers()
        handover, takeover = body.get("handover_userid") or "", body.get("takeover_userid") or ""
        exts = body.get("external_userid") or []
        if not exts or len(exts) > self.rules.transfer_batch_max:
            raise SandboxError(40058, f"external_userid: 1..{self.rules.transfer_batch_max}")
        if takeover not in self.clerks:
            raise SandboxError(40003)
        if mode == "resigned" and handover not in self.resigned:
            raise SandboxError(40097)           # 该成员尚未离职
        if mode == "onjob":
            if handover not in self.clerks:
                raise SandboxError(40003)
            msg = body.get("transfer_success_msg")
            if msg is not None and len(msg) > self.rules.transfer_success_msg_max:
                raise SandboxError(40058, "transfer_success_msg over 200 characters")
        now = self.now()
        out = []
        for ext in exts:
            x = self.external.get(ext)
            if x is None:
                code = 40096
            elif handover not in x["follow"]:
                code = 84061                     # 不存在外部联系人的关系
            elif self._pending(ext) is not None:
                code = self.rules.transfer_pending_errcode
            elif mode == "onjob" and sum(1 for t in self.transfers if t.external_userid == ext and t.mode == "onjob"
                                         and t.started_at > now - 90 * DAY) >= self.rules.onjob_transfers_per_90_days:
                code = 40128
            else:
                self.transfers.append(Transfer(handover, takeover, ext, mode, now))
                code = 0
            out.append({"external_userid": ext, "errcode": code})
        return {"customer": out}

    def resigned_transfer_customer(self, body: dict) -> dict:
        return self._transfer_customers(body, "resigned")

    def onjob_transfer_customer(self, body: dict) -> dict:
        return self._transfer_customers(body, "onjob")

    def _transfer_result(self, body: dict, mode: str) -> dict:
        self._advance_transfers()
        handover, takeover = body.get("handover_userid") or "", body.get("takeover_userid") or ""
        rows = [t for t in self.transfers if t.mode == mode and t.handover == handover and t.takeover == takeover]
        start = int(body.get("cursor") or 0)
        page = rows[start:start + 100]
        nxt = str(start + 100) if start + 100 < len(rows) else ""
        return {"customer": [{"external_userid": t.external_userid, "status": t.status,
                              "takeover_time": t.takeover_time} for t in page], "next_cursor": nxt}

    def resigned_transfer_result(self, body: dict) -> dict:
        return self._transfer_result(body, "resigned")

    def onjob_transfer_result(self, body: dict) -> dict:
        return self._transfer_result(body, "onjob")

    def _transfer_groups(self, body: dict, mode: str) -> dict:
        chats, new_owner = body.get("chat_id_list") or [], body.get("new_owner") or ""
        if not chats or len(chats) > self.rules.group_transfer_batch_max:
            raise SandboxError(40058, f"chat_id_list: 1..{self.rules.group_transfer_batch_max}")
        if new_owner not in self.clerks:
            raise SandboxError(40003)
        now = self.now()
        failed = []
        for chat_id in chats:
            g = self.groups.get(chat_id)
            code = 0
            if g is None:
                code = 40050
            elif mode == "resigned" and g.owner not in self.resigned:
                code = 90500                      # 群主未离职: only groups of resigned owners
            elif mode == "onjob" and g.owner not in self.clerks:
                code = 40003
            elif g.owner == new_owner:
                code = 40058
            elif sum(1 for x in self.group_transfers if x["from"] == g.owner and x["at"] > now - DAY) \
                    >= self.rules.group_transfers_per_day:
                code = self.rules.group_transfer_daily_errcode
            elif mode == "onjob" and sum(1 for x in self.group_transfers if x["chat_id"] == chat_id
                                         and x["mode"] == "onjob" and x["at"] > now - 90 * DAY) \
                    >= self.rules.onjob_transfers_per_90_days:
                code = self.rules.onjob_group_transfer_limit_errcode
            if code:
                failed.append({"chat_id": chat_id, "errcode": code, "errmsg": "transfer failed"})
                continue
            self.group_transfers.append({"chat_id": chat_id, "from": g.owner, "to": new_owner, "mode": mode,
                                         "at": now})
            g.owner = new_owner
            if not any(m.userid == new_owner for m in g.members):
                from bot.sandbox.backend import Member
                g.members.append(Member(new_owner, 1, int(now), 1))
            g.version += 1
        return {"failed_chat_list": failed}

    def groupchat_transfer(self, body: dict) -> dict:
        return self._transfer_groups(body, "resigned")

    def groupchat_onjob_transfer(self, body: dict) -> dict:
        return self._transfer_groups(body, "onjob")

    def groupchat_list_with_status(self, body: dict) -> dict:
        """groupchat/list with each group's status and status_filter 0 all, 1 离职待继承, 2 离职继承中,
        3 离职继承完成 (doc 93414 via zsmhub `apis/客户群管理-获取客户群列表.go`). A group transfer is done
        at once here, so 2 is never seen."""
        limit = int(body.get("limit") or 0)
        if not 1 <= limit <= 1000:
            raise SandboxError(40058, "limit must be 1-1000")
        owners = (body.get("owner_filter") or {}).get("userid_list")
        if owners is not None and len(owners) > 100:
            raise SandboxError(40058, "owner_filter.userid_list over 100")
        status_filter = int(body.get("status_filter") or 0)
        inherited = {x["chat_id"] for x in self.group_transfers if x["mode"] == "resigned"}
        items = []
        for chat_id in sorted(c for c, g in self.groups.items() if owners is None or g.owner in owners):
            g = self.groups[chat_id]
            status = 1 if g.owner in self.resigned else 3 if chat_id in inherited else 0
            if status_filter in (0, status):
                items.append({"chat_id": chat_id, "status": status})
        start = int(body.get("cursor") or 0)
        nxt = str(start + limit) if start + limit < len(items) else ""
        return {"group_chat_list": items[start:start + limit], "next_cursor": nxt}

    def staff_state(self) -> dict:
        with self.lock:
            self._advance_transfers()
            counts: dict[str, int] = defaultdict(int)
            for x in self.external.values():
                for u in x["follow"]:
                    counts[u] += 1
            return {"resigned": sorted(self.resigned), "customers": dict(counts),
                    "transfers": [t.__dict__ for t in self.transfers], "group_transfers": self.group_transfers}


def _h(name):
    return lambda backend, body: getattr(backend, name)(body)


STAFF_ENDPOINTS = {
    "user/get": _h("user_get"),
    "externalcontact/list": _h("externalcontact_list"),
    "externalcontact/get_unassigned_list": _h("get_unassigned_list"),
    "externalcontact/resigned/transfer_customer": _h("resigned_transfer_customer"),
    "externalcontact/resigned/transfer_result": _h("resigned_transfer_result"),
    "externalcontact/transfer_customer": _h("onjob_transfer_customer"),
    "externalcontact/transfer_result": _h("onjob_transfer_result"),
    "externalcontact/groupchat/transfer": _h("groupchat_transfer"),
    "externalcontact/groupchat/onjob_transfer": _h("groupchat_onjob_transfer"),
    # with status_filter 1-3 (groups of resigned owners); status 0 as before
    "externalcontact/groupchat/list": _h("groupchat_list_with_status"),
}

