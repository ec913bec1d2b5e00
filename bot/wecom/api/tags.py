from wechatpy.client.api.base import BaseWeChatAPI

# add_corp_tag: 「group_name 标签组名称，最长为30个字符」, 「tag.name 添加的标签名称，最长为30个字符」 (doc 92117,
# text as copied by WxJava / metacpan QQ::weixin::work). The admin console allows 15 [3rd]: the API's 30 here.
MAX_NAME = 30


class TagAPI(BaseWeChatAPI):
    """企业客户标签 — 管理企业标签 (doc 92117, read from its 代开发 copy 96320) and 编辑客户企业标签
    mark_tag (doc 92118, read from 92697). 「应用仅能编辑和删除本应用创建的标签」: the bot adds and
    marks, renames a store tag it created when the store is renamed, and never deletes."""

    def get_corp_tag_list(self, *, tag_ids: list[str] | None = None, group_ids: list[str] | None = None) -> list[dict]:
        """The tag groups with their tags. Neither filter: all of them; both: group_id alone counts."""
        data = {}
        if tag_ids:
            data["tag_id"] = list(tag_ids)
        if group_ids:
            data["group_id"] = list(group_ids)
        return list(self._post("externalcontact/get_corp_tag_list", data=data).get("tag_group") or [])

    def add_corp_tag(self, *, names: list[str], group_id: str | None = None, group_name: str | None = None) -> dict:
        """Adds tags to the group `group_id`, or to the group named `group_name` (created when no group has
        that name, 「如果填写的groupname已经存在，则会在此标签组下新建标签」). Returns `tag_group`."""
        data: dict = {"tag": [{"name": n[:MAX_NAME]} for n in names]}
        if group_id:
            data["group_id"] = group_id
        else:
            data["group_name"] = (group_name or "")[:MAX_NAME]
        return self._post("externalcontact/add_corp_tag", data=data)["tag_group"]

    def edit_corp_tag(self, *, tag_id: str, name: str) -> None:
        """Renames a tag (or group) this app created: 「id 标签或标签组的id」, 「name 新的标签或标签组名称，
        最长为30个字符」 (doc 92117)."""
        self._post("externalcontact/edit_corp_tag", data={"id": tag_id, "name": name[:MAX_NAME]})

    def mark_tag(self, *, userid: str, external_userid: str, add_tag: list[str] | None = None,
                 remove_tag: list[str] | None = None) -> None:
        """Tags (or untags) the customer as `userid`'s contact: 「请确保external_userid是userid的外部联系人」;
        add_tag and remove_tag may not both be empty."""
        self._post("externalcontact/mark_tag", data={"userid": userid, "external_userid": external_userid,
                                                      "add_tag": list(add_tag or []),
                                                      "remove_tag": list(remove_tag or [])})
