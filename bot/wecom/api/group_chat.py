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

    def statistic(self, *, day_begin_time: int, day_end_time: int, owners: list[str], offset: int = 0,
                  limit: int = 1000) -> dict:
        """客户群统计数据，按群主聚合 — doc 92133 (96359 for third-party apps). Days as day-start
        timestamps, yesterday back to 180 days, span ≤ 30 days; ≤ 100 owners per call; limit ≤ 1000.
        → {total, next_offset, items[{owner, data{new_chat_cnt, chat_total, chat_has_msg,
        new_member_cnt, member_total, member_has_msg, msg_total, migrate_trainee_chat_cnt}}]}."""
        return self._post("externalcontact/groupchat/statistic", data={
            "day_begin_time": day_begin_time, "day_end_time": day_end_time,
            "owner_filter": {"userid_list": owners[:100]}, "order_by": 1, "order_asc": 0,
            "offset": offset, "limit": limit})

    def statistic_by_owner(self, day_begin_time: int, day_end_time: int, owners: list[str]) -> dict[str, dict]:
        """`statistic` for any number of owners: 100 per call, following next_offset; owner → data."""
        out: dict[str, dict] = {}
        for i in range(0, len(owners), 100):
            offset = 0
            while True:
                res = self.statistic(day_begin_time=day_begin_time, day_end_time=day_end_time,
                                     owners=owners[i:i + 100], offset=offset)
                for item in res.get("items", []):
                    out[item["owner"]] = item.get("data", {})
                offset = res.get("next_offset") or 0
                if not offset or offset >= (res.get("total") or 0):
                    break
        return out
