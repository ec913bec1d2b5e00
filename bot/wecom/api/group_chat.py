from wechatpy.work.client.api import WeChatExternalContactGroupChat


class GroupChatAPI(WeChatExternalContactGroupChat):
    """客户群 — doc 92122 / 96338. wechatpy's `get` cannot ask for member names (need_name)."""

    def get(self, chat_id: str, need_name: bool = False) -> dict:
        res = self._post("externalcontact/groupchat/get", data={"chat_id": chat_id, "need_name": int(need_name)})
        return res["group_chat"]

    def list_owned(self, owners: list[str], limit: int = 1000) -> list[str]:
        """Every chat_id of these owners (≤ 100 per call), following the cursor."""
        chat_ids: list[str] = []
        for i in range(0, len(owners), 100):
            cursor = None
            while True:
                res = self.list(status_filter=0, owner_userid_list=owners[i:i + 100], cursor=cursor, limit=limit)
                chat_ids += [g["chat_id"] for g in res.get("group_chat_list", [])]
                cursor = res.get("next_cursor")
                if not cursor:
                    break
        return chat_ids
