from wechatpy.client.api.base import BaseWeChatAPI

MAX_CHATS = 5          # chat_id_list holds at most 5 groups
MAX_STATE = 30         # state ≤ 30 UTF-8 chars
MAX_ROOM_BASE_NAME = 40
SCAN_JOIN_LIMIT = 200  # scan-to-join stops at 200 members (groups hold 500)


class JoinWayAPI(BaseWeChatAPI):
    """客户群「加入群聊」 — doc 92229 (read from 99547)."""

    def _body(self, chat_ids, state, room_base_name, remark, auto_create_room, room_base_id) -> dict:
        return {"scene": 2, "remark": (remark or "")[:30], "auto_create_room": int(auto_create_room),
                "room_base_name": room_base_name[:MAX_ROOM_BASE_NAME], "room_base_id": room_base_id,
                "chat_id_list": list(chat_ids)[:MAX_CHATS], "state": state[:MAX_STATE]}

    def add_join_way(self, *, chat_ids, state, room_base_name, remark=None, auto_create_room=True,
                     room_base_id=1) -> str:
        res = self._post("externalcontact/groupchat/add_join_way",
                         data=self._body(chat_ids, state, room_base_name, remark, auto_create_room, room_base_id))
        return res["config_id"]

    def get_join_way(self, config_id: str) -> dict:
        """The join way with its `qr_code` URL."""
        return self._post("externalcontact/groupchat/get_join_way", data={"config_id": config_id})["join_way"]

    def update_join_way(self, config_id, *, chat_ids, state, room_base_name, remark=None,
                        auto_create_room=True, room_base_id=1) -> None:
        """Overwrites the whole config."""
        body = self._body(chat_ids, state, room_base_name, remark, auto_create_room, room_base_id)
        self._post("externalcontact/groupchat/update_join_way", data={"config_id": config_id, **body})

    def del_join_way(self, config_id: str) -> None:
        self._post("externalcontact/groupchat/del_join_way", data={"config_id": config_id})
