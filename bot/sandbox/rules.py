"""WeCom's rules as settings: each UNCONFIRMED fact of shared/wecom-facts.md is a knob."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Rules:
    token_ttl: int = 7200                 # gettoken expires_in
    # gettoken while the corp's token is valid answers the same token. CONFIRMED: WeCom's doc 91039 as
    # published until 2020 (https://work.weixin.qq.com/api/doc/90000/90135/91039): 「有效期内重复获取
    # 返回相同结果，过期后获取会返回新的access_token」; the 2024/03/26 page
    # (https://developer.work.weixin.qq.com/document/path/91039) no longer says it, nor the opposite.
    # What expires_in says then is UNCONFIRMED (the doc: 「有效期通过返回的expires_in来传达」):
    # remaining = the token's remaining lifetime (default); full = token_ttl whatever remains (the
    # token still runs out on time and calls get 42001).
    gettoken_repeat: str = "remaining"    # remaining | full
    welcome_code_ttl: float = 20.0        # send_welcome_msg window
    scan_join_limit: int = 200            # scan-to-join stops here (groups hold 500)
    group_capacity: int = 500
    per_api_per_minute: int = 10_000      # per corp, per API → 45009 past it
    api_limits: dict[str, int] = field(default_factory=dict)  # per-endpoint overrides
    app_msg_per_member_minute: int = 30   # message/send: the excess is dropped silently
    receive_cap: str = "daily_1"          # daily_1 | weekly_7 | days_in_month
    groupmsg_confirm: str = "manual"      # manual | immediate: does the owner confirm at once?
    remind_per_day: int = 3
    groupchat_get_lag: float = 0.0        # seconds a new member stays invisible to groupchat/get
    callback_timeout: float = 5.0         # WeCom waits this long for the bot's answer
    redeliveries: int = 3                 # then redelivers the same payload up to this many times
    media_ttl: float = 3 * 86400
    broken_join_states: list[str] = field(default_factory=list)  # scanning these group QRs fails for all

    def update(self, **changes) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown rule(s): {', '.join(sorted(unknown))}")
        for k, v in changes.items():
            setattr(self, k, v)

    def as_dict(self) -> dict:
        return asdict(self)
