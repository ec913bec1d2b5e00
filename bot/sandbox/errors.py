"""WeCom's own error codes, as the sandbox answers them (shared/wecom-facts.md §9)."""

ERRMSG = {
    -1: "system busy",
    40001: "invalid credential / secret",
    40003: "invalid userid",
    40006: "invalid media size",
    40007: "invalid media_id",
    40014: "invalid access_token",
    40029: "invalid code",
    40050: "chatid not found",
    40058: "invalid parameter",
    41001: "access_token missing",
    41044: "invalid config_id",
    41049: "welcome_code missing",
    41050: "invalid welcome_code: must be used within 20 seconds of adding",
    41051: "customer and member already chatting / welcome already sent",
    41096: "welcome msg is being distributed",
    42001: "access_token expired",
    45002: "content size out of limit",
    45009: "api freq out of limit",
    41063: "groupmsg is being dispatched, try again later",
    41094: "groupmsg remind over frequency limit",
    49008: "chat has been dismissed",
    47001: "data format error",
    81013: "user & party & tag all invalid",
    90501: "chat is not external group chat",
    40096: "invalid external userid",
    40097: "该成员尚未离职",
    40128: "customer transferred too many times (at most 2 in 90 days)",
    40129: "customer is waiting for a takeover",
    60111: "UserID不存在",
    84061: "not external contact",
    90500: "the group's owner has not resigned",
}


class SandboxError(Exception):
    def __init__(self, errcode: int, errmsg: str | None = None):
        super().__init__(errcode, errmsg)
        self.errcode = errcode
        self.errmsg = errmsg or ERRMSG.get(errcode, "error")

    def body(self) -> dict:
        return {"errcode": self.errcode, "errmsg": self.errmsg}
