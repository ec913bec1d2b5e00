from wechatpy.client.api.base import BaseWeChatAPI


class GroupMsgAPI(BaseWeChatAPI):
    """群发 results and follow-up — doc 93338 (read from 96355). add_msg_template is wechatpy's."""

    def get_groupmsg_list_v2(self, *, chat_type: str, start_time: int, end_time: int, creator: str | None = None,
                             filter_type: int = 2, limit: int = 100, cursor: str | None = None) -> dict:
        data = {"chat_type": chat_type, "start_time": start_time, "end_time": end_time,
                "filter_type": filter_type, "limit": limit}
        if creator:
            data["creator"] = creator
        if cursor:
            data["cursor"] = cursor
        return self._post("externalcontact/get_groupmsg_list_v2", data=data)

    def get_groupmsg_task(self, msgid: str, limit: int = 1000, cursor: str | None = None) -> dict:
        data = {"msgid": msgid, "limit": limit, **({"cursor": cursor} if cursor else {})}
        return self._post("externalcontact/get_groupmsg_task", data=data)

    def get_groupmsg_send_result(self, msgid: str, userid: str, limit: int = 1000,
                                 cursor: str | None = None) -> dict:
        data = {"msgid": msgid, "userid": userid, "limit": limit, **({"cursor": cursor} if cursor else {})}
        return self._post("externalcontact/get_groupmsg_send_result", data=data)

    def remind_groupmsg_send(self, msgid: str) -> None:
        """At most 3 reminders per broadcast in 24 h."""
        self._post("externalcontact/remind_groupmsg_send", data={"msgid": msgid})

    def cancel_groupmsg_send(self, msgid: str) -> None:
        self._post("externalcontact/cancel_groupmsg_send", data={"msgid": msgid})
