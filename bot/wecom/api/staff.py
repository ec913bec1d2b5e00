from wechatpy.client.api.base import BaseWeChatAPI

# user/get `status`: 1 已激活, 2 已禁用, 4 未激活, 5 退出企业 (doc 90196 via SDK text). 60111 「UserID不存在」
# for a member who was deleted (doc 90313). Both mean the clerk is gone.
STATUS_LEFT = 5


class StaffAPI(BaseWeChatAPI):
    """成员 — user/get (doc 90196), and one member's customers, externalcontact/list (doc 92113):
    「企业可通过此接口获取指定成员添加的客户列表」; 84061 when the member has none."""

    def get(self, userid: str) -> dict:
        return self._get("user/get", params={"userid": userid})

    def list(self, userid: str) -> list[str]:
        return list(self._get("externalcontact/list", params={"userid": userid}).get("external_userid") or [])
