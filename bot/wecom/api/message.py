from wechatpy.client.api.base import BaseWeChatAPI

# WeCom's duplicate check drops a repeat of the same content to the same member inside the interval
# (default 1,800 s, at most 4 h). Kept for crash repeats of one outbox row.
DUPLICATE_CHECK_SECONDS = 1800


class AppMessageAPI(BaseWeChatAPI):
    """应用消息 — doc 90236 (message/send): text, markdown, textcard, template_card to members.
    WeCom drops what exceeds 30 a minute and 1,000 an hour per member, silently."""

    def send(self, *, agent_id: int, touser: list[str], msgtype: str, content: dict,
             duplicate_check_seconds: int = DUPLICATE_CHECK_SECONDS) -> dict:
        body = {"touser": "|".join(touser), "agentid": agent_id, "msgtype": msgtype, msgtype: content,
                "enable_duplicate_check": 1, "duplicate_check_interval": duplicate_check_seconds}
        return self._post("message/send", data=body)
