from wechatpy.client.api.base import BaseWeChatAPI

# Doc 90236: 「表示在一定时间间隔内，同样内容（请求json）的消息，不会重复收到；时间间隔可通过
# duplicate_check_interval指定，默认1800秒」, 「最大不超过4小时」. What WeCom answers for a dropped duplicate
# is not documented (UNCONFIRMED; the sandbox answers errcode 0 and delivers nothing).
DUPLICATE_CHECK_SECONDS = 1800
# Doc 90236: 「每应用对同一个成员不可超过30次/分钟，1000次/小时，超过部分会被丢弃不下发」 (no errcode).
PER_MEMBER_MINUTE = 30
PER_MEMBER_HOUR = 1000


class AppMessageAPI(BaseWeChatAPI):
    """应用消息 — doc 90236 (message/send): text, markdown, textcard, template_card to members.
    WeCom drops what exceeds 30 a minute and 1,000 an hour per member, silently."""

    def send(self, *, agent_id: int, touser: list[str], msgtype: str, content: dict,
             duplicate_check_seconds: int = DUPLICATE_CHECK_SECONDS) -> dict:
        body = {"touser": "|".join(touser), "agentid": agent_id, "msgtype": msgtype, msgtype: content,
                "enable_duplicate_check": 1, "duplicate_check_interval": duplicate_check_seconds}
        return self._post("message/send", data=body)
