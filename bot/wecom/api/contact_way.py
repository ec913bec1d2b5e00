from wechatpy.client.api.base import BaseWeChatAPI


class ContactWayAPI(BaseWeChatAPI):
    """「联系我」 listing — doc 92572 (list_contact_way): 「获取企业配置的「联系我」二维码和「联系我」小程序
    插件列表。不包含临时会话。注意，该接口仅可获取2021年7月10日以后创建的「联系我」」; start_time default
    90 days ago, limit ≤ 1000; answers config_ids only. add/get/update/del are wechatpy's."""

    def list_contact_way(self, *, start_time: int | None = None, end_time: int | None = None,
                         cursor: str | None = None, limit: int = 1000) -> dict:
        data: dict = {"limit": limit}
        if start_time is not None:
            data["start_time"] = start_time
        if end_time is not None:
            data["end_time"] = end_time
        if cursor:
            data["cursor"] = cursor
        return self._post("externalcontact/list_contact_way", data=data)

    def find_by_state(self, state: str, *, start_time: int, end_time: int) -> dict | None:
        """The contact way created in [start_time, end_time] carrying `state`: how an add_contact_way
        whose answer was lost is found (WeCom has no idempotency key for it)."""
        cursor = None
        while True:
            page = self.list_contact_way(start_time=start_time, end_time=end_time, cursor=cursor)
            for item in page.get("contact_way", []):
                way = self._post("externalcontact/get_contact_way",
                                 data={"config_id": item["config_id"]})["contact_way"]
                if way.get("state") == state:
                    return way
            cursor = page.get("next_cursor")
            if not cursor:
                return None
