from wechatpy.client.api.base import BaseWeChatAPI


class MemberAuthAPI(BaseWeChatAPI):
    """身份验证 — auth/getuserinfo (doc 91023): the member behind an OAuth / web-login `code`.
    The code is single use and lives 5 minutes (40029 otherwise). A member answers `userid`; someone
    outside the corp answers `openid` (or `external_userid`) and no userid."""

    def getuserinfo(self, code: str) -> dict:
        return self._get("auth/getuserinfo", params={"code": code})
