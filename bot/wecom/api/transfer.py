from wechatpy.client.api.base import BaseWeChatAPI

# Sources: doc 94100 / 92127 / 95703 / 90313 via SDK text; on-job customers doc 92125.
MAX_CUSTOMERS = 100        # 「最多一次转移100个客户」
MAX_CHATS = 100            # groupchat/transfer, onjob_transfer: chat_id_list ≤ 100
MAX_SUCCESS_MSG = 200      # on-job transfer_success_msg ≤ 200 characters
UNASSIGNED_PAGE = 1000     # get_unassigned_list page_size ≤ 1000
# transfer_result status
DONE, WAITING, REFUSED, OVER_LIMIT = 1, 2, 3, 4


class TransferAPI(BaseWeChatAPI):
    """客户继承: 离职继承 (resigned/*, get_unassigned_list) and 在职继承 (transfer_customer,
    transfer_result). A per-customer errcode 0 only means the 24-hour takeover started: follow it
    with the *_result call until the status is 1, 3 or 4."""

    def get_unassigned_list(self, *, cursor: str | None = None, page_size: int = UNASSIGNED_PAGE) -> dict:
        data: dict = {"page_size": page_size}
        if cursor:
            data["cursor"] = cursor
        return self._post("externalcontact/get_unassigned_list", data=data)

    def resigned_transfer_customer(self, *, handover_userid: str, takeover_userid: str,
                                   external_userid: list[str]) -> list[dict]:
        res = self._post("externalcontact/resigned/transfer_customer", data={
            "handover_userid": handover_userid, "takeover_userid": takeover_userid,
            "external_userid": external_userid[:MAX_CUSTOMERS]})
        return list(res.get("customer") or [])

    def resigned_transfer_result(self, *, handover_userid: str, takeover_userid: str,
                                 cursor: str | None = None) -> dict:
        data = {"handover_userid": handover_userid, "takeover_userid": takeover_userid}
        if cursor:
            data["cursor"] = cursor
        return self._post("externalcontact/resigned/transfer_result", data=data)

    def transfer_customer(self, *, handover_userid: str, takeover_userid: str, external_userid: list[str],
                          transfer_success_msg: str | None = None) -> list[dict]:
        data = {"handover_userid": handover_userid, "takeover_userid": takeover_userid,
                "external_userid": external_userid[:MAX_CUSTOMERS]}
        if transfer_success_msg:
            data["transfer_success_msg"] = transfer_success_msg[:MAX_SUCCESS_MSG]
        return list(self._post("externalcontact/transfer_customer", data=data).get("customer") or [])

    def transfer_result(self, *, handover_userid: str, takeover_userid: str, cursor: str | None = None) -> dict:
        data = {"handover_userid": handover_userid, "takeover_userid": takeover_userid}
        if cursor:
            data["cursor"] = cursor
        return self._post("externalcontact/transfer_result", data=data)

    def results(self, *, onjob: bool, handover_userid: str, takeover_userid: str) -> dict[str, dict]:
        """Every customer's transfer status for this pair, following the cursor: external_userid → row."""
        call = self.transfer_result if onjob else self.resigned_transfer_result
        out: dict[str, dict] = {}
        cursor = None
        for _ in range(10_000):
            res = call(handover_userid=handover_userid, takeover_userid=takeover_userid, cursor=cursor)
            for c in res.get("customer") or []:
                out[c["external_userid"]] = c
            cursor = res.get("next_cursor")
            if not cursor:
                break
        return out


class GroupTransferAPI(BaseWeChatAPI):
    """客户群继承: groupchat/transfer (「群主离职了的客户群，才可继承」, 90500 otherwise; 「同一个人的群，
    限制每天最多分配300个给新群主」) and groupchat/onjob_transfer (each group twice per 90 days)."""

    def transfer(self, *, chat_id_list: list[str], new_owner: str) -> list[dict]:
        res = self._post("externalcontact/groupchat/transfer",
                         data={"chat_id_list": chat_id_list[:MAX_CHATS], "new_owner": new_owner})
        return list(res.get("failed_chat_list") or [])

    def onjob_transfer(self, *, chat_id_list: list[str], new_owner: str) -> list[dict]:
        res = self._post("externalcontact/groupchat/onjob_transfer",
                         data={"chat_id_list": chat_id_list[:MAX_CHATS], "new_owner": new_owner})
        return list(res.get("failed_chat_list") or [])
