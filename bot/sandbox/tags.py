"""Corp customer tags (企业客户标签) in the simulated corp: tag groups, tags, and each customer's tags
per follow user, with WeCom's rules (rules.py names their sources). A mixin of WeComBackend: it uses
the backend's `clerks`, `external` (customers and whom they follow), `lock`, `now`, `rules`, `_id`.

- get_corp_tag_list / add_corp_tag / edit_corp_tag / del_corp_tag (doc 92117) and mark_tag (doc 92118).
- Tags made through the API belong to the app; those of the admin console (control plane
  `admin_adds_tags`) do not, and the app may mark with them but not edit or delete them.
- `admin_deletes_tag` deletes a tag in the admin console (as if by hand): it leaves every customer,
  and mark_tag with its id answers rules.invalid_tag_errcode.
"""

from __future__ import annotations

from collections import defaultdict

from bot.sandbox.errors import SandboxError


class TagsMixin:
    # -- state ------------------------------------------------------------------------------
    def reset_tags(self) -> None:
        self.tag_groups: dict[str, dict] = {}        # group_id → {group_id, group_name, create_time, order, by, tag: {id: {...}}}
        self.contact_tags: dict[tuple[str, str], set[str]] = defaultdict(set)   # (external_userid, userid) → tag ids

    def _all_tags(self) -> dict[str, tuple[dict, dict]]:
        return {tid: (g, t) for g in self.tag_groups.values() for tid, t in g["tag"].items()}

    def _check_name(self, name: str | None) -> str:
        if not name or len(name) > self.rules.tag_name_max:
            raise SandboxError(self.rules.tag_name_errcode, f"tag name empty or over {self.rules.tag_name_max} characters")
        return name

    def _add_tags(self, group: dict, names: list[str], by: str) -> None:
        existing = {t["name"] for t in group["tag"].values()}
        new = [n for n in dict.fromkeys(names) if n not in existing]   # 「如果传入多个同名标签，则只会创建一个」
        if len(new) < len(set(names)) and self.rules.duplicate_tag_errcode:
            raise SandboxError(self.rules.duplicate_tag_errcode, "tag name already exists in this group")
        if len(self._all_tags()) + len(new) > self.rules.corp_tag_limit:
            raise SandboxError(self.rules.corp_tag_limit_errcode)
        for n in new:
            tid = self._id("et")
            group["tag"][tid] = {"id": tid, "name": n, "create_time": int(self.now()), "order": 0, "by": by}

    def _new_group(self, name: str, by: str) -> dict:
        gid = self._id("et")
        g = {"group_id": gid, "group_name": name, "create_time": int(self.now()), "order": 0, "by": by, "tag": {}}
        self.tag_groups[gid] = g
        return g

    @staticmethod
    def _shape(g: dict, tags: list[dict] | None = None) -> dict:
        return {"group_id": g["group_id"], "group_name": g["group_name"], "create_time": g["create_time"],
                "order": g["order"], "tag": [{k: v for k, v in t.items() if k != "by"}
                                             for t in (g["tag"].values() if tags is None else tags)]}

    # -- control plane ----------------------------------------------------------------------
    def admin_adds_tags(self, group_name: str, names: list[str]) -> dict:
        """An admin adds tags in the console (the app did not create them)."""
        with self.lock:
            g = next((g for g in self.tag_groups.values() if g["group_name"] == group_name), None) \
                or self._new_group(group_name, "admin")
            self._add_tags(g, names, "admin")
            return {t["name"]: tid for tid, t in g["tag"].items()}

    def admin_deletes_tag(self, group_name: str, name: str) -> str:
        """An admin deletes a tag in the console: gone from the library and from every customer."""
        with self.lock:
            for g in self.tag_groups.values():
                for tid, t in list(g["tag"].items()):
                    if g["group_name"] == group_name and t["name"] == name:
                        self._drop_tag(g, tid)
                        return tid
            raise SandboxError(self.rules.invalid_tag_errcode)

    def _drop_tag(self, g: dict, tid: str) -> None:
        del g["tag"][tid]
        for ids in self.contact_tags.values():
            ids.discard(tid)
        if not g["tag"]:   # 「不支持创建空标签组」: a group without tags goes too (UNCONFIRMED, see rules)
            self.tag_groups.pop(g["group_id"], None)

    def tags_of(self, external_userid: str, userid: str | None = None) -> list[str]:
        """The names of a customer's tags (as `userid`'s contact, or of all their follow users)."""
        with self.lock:
            names = self._all_tags()
            ids = set().union(*(v for (e, u), v in self.contact_tags.items()
                                if e == external_userid and (userid is None or u == userid)))
            return sorted(names[i][1]["name"] for i in ids if i in names)

    def tag_state(self) -> dict:
        with self.lock:
            names = self._all_tags()
            return {"groups": {g["group_name"]: sorted(t["name"] for t in g["tag"].values())
                               for g in self.tag_groups.values()},
                    "marked": {f"{e}/{u}": sorted(names[i][1]["name"] for i in ids if i in names)
                               for (e, u), ids in self.contact_tags.items() if ids}}

    # -- endpoints --------------------------------------------------------------------------
    def get_corp_tag_list(self, body: dict) -> dict:
        group_ids, tag_ids = body.get("group_id") or [], body.get("tag_id") or []
        if group_ids:   # 「同时传递tag_id和group_id时，忽略tag_id，仅以group_id作为过滤条件」
            return {"tag_group": [self._shape(self.tag_groups[g]) for g in group_ids if g in self.tag_groups]}
        if tag_ids:
            out = []
            for g in self.tag_groups.values():
                tags = [t for tid, t in g["tag"].items() if tid in tag_ids]
                if tags:
                    out.append(self._shape(g, tags))
            return {"tag_group": out}
        return {"tag_group": [self._shape(g) for g in self.tag_groups.values()]}

    def add_corp_tag(self, body: dict) -> dict:
        names = [self._check_name((t or {}).get("name")) for t in body.get("tag") or []]
        if not names:   # 「不支持创建空标签组」
            raise SandboxError(40058, "tag is required")
        if body.get("group_id"):   # 「如果填写了group_id参数，则group_name和标签组的order参数会被忽略」
            g = self.tag_groups.get(body["group_id"])
            if g is None:
                raise SandboxError(self.rules.invalid_tag_errcode, "no such tag group")
        else:
            name = self._check_name(body.get("group_name"))
            # 「如果填写的groupname已经存在，则会在此标签组下新建标签」
            g = next((g for g in self.tag_groups.values() if g["group_name"] == name), None)
            if g is None:
                if len(self._all_tags()) + len(set(names)) > self.rules.corp_tag_limit:
                    raise SandboxError(self.rules.corp_tag_limit_errcode)
                g = self._new_group(name, "app")
                g["order"] = int(body.get("order") or 0)
        before = set(g["tag"])
        try:
            self._add_tags(g, names, "app")
        except SandboxError:
            if not g["tag"]:
                self.tag_groups.pop(g["group_id"], None)
            raise
        added = [t for tid, t in g["tag"].items() if tid not in before]
        if not self.rules.duplicate_tag_errcode:   # the existing tag of that name is answered instead
            added += [t for tid, t in g["tag"].items() if tid in before and t["name"] in names]
        return {"tag_group": self._shape(g, added)}

    def _own(self, tid: str) -> tuple[dict, dict]:
        found = self._all_tags().get(tid) or (None, None)
        g, t = found
        if g is None:
            group = self.tag_groups.get(tid)
            if group is None:
                raise SandboxError(self.rules.invalid_tag_errcode)
            if group["by"] != "app":
                raise SandboxError(self.rules.not_own_tag_errcode, "an app edits only the tags it created")
            return group, None
        if t["by"] != "app":   # 「应用仅能编辑和删除本应用创建的标签」
            raise SandboxError(self.rules.not_own_tag_errcode, "an app edits only the tags it created")
        return g, t

    def edit_corp_tag(self, body: dict) -> dict:
        g, t = self._own(body.get("id") or "")
        name = body.get("name")
        if name is not None:
            (t or g)["name" if t else "group_name"] = self._check_name(name)
        if body.get("order") is not None:
            (t or g)["order"] = int(body["order"])
        return {}

    def del_corp_tag(self, body: dict) -> dict:
        tag_ids, group_ids = body.get("tag_id") or [], body.get("group_id") or []
        if not tag_ids and not group_ids:
            raise SandboxError(40058, "tag_id or group_id is required")
        for tid in tag_ids:
            g, _ = self._own(tid)
        for gid in group_ids:
            self._own(gid)
        for tid in tag_ids:
            g, _ = self._all_tags()[tid]
            self._drop_tag(g, tid)
        for gid in group_ids:
            for tid in list(self.tag_groups.get(gid, {}).get("tag", {})):
                self._drop_tag(self.tag_groups[gid], tid)
            self.tag_groups.pop(gid, None)
        return {}

    def mark_tag(self, body: dict) -> dict:
        userid, ext = body.get("userid") or "", body.get("external_userid") or ""
        add, remove = list(body.get("add_tag") or []), list(body.get("remove_tag") or [])
        if not add and not remove:   # 「add_tag和remove_tag不可同时为空」
            raise SandboxError(40058, "add_tag and remove_tag may not both be empty")
        if userid not in self.clerks:
            raise SandboxError(40003)
        customer = self.external.get(ext)
        if customer is None:
            raise SandboxError(40096)
        if userid not in customer["follow"]:   # 「请确保external_userid是userid的外部联系人」
            raise SandboxError(self.rules.mark_tag_not_contact_errcode)
        tags = self._all_tags()
        if any(t not in tags for t in add + remove):
            raise SandboxError(self.rules.invalid_tag_errcode)
        ids = self.contact_tags[(ext, userid)]
        if len(ids | set(add)) > self.rules.tags_per_contact_max:
            raise SandboxError(self.rules.corp_tag_limit_errcode, "over the tags one member may put on a customer")
        ids.update(add)
        ids.difference_update(remove)
        return {}


def _h(name):
    return lambda backend, body: getattr(backend, name)(body)


TAG_ENDPOINTS = {
    "externalcontact/get_corp_tag_list": _h("get_corp_tag_list"),
    "externalcontact/add_corp_tag": _h("add_corp_tag"),
    "externalcontact/edit_corp_tag": _h("edit_corp_tag"),
    "externalcontact/del_corp_tag": _h("del_corp_tag"),
    "externalcontact/mark_tag": _h("mark_tag"),
}
TAG_WRITES = {"externalcontact/add_corp_tag", "externalcontact/edit_corp_tag", "externalcontact/del_corp_tag",
              "externalcontact/mark_tag"}
