"""WeCom API families wechatpy lacks or gets wrong; one small class per family."""

from bot.wecom.api.contact_way import ContactWayAPI
from bot.wecom.api.group_chat import GroupChatAPI
from bot.wecom.api.groupmsg import GroupMsgAPI
from bot.wecom.api.join_way import JoinWayAPI
from bot.wecom.api.media import MediaAPI
from bot.wecom.api.message import AppMessageAPI

__all__ = ["AppMessageAPI", "ContactWayAPI", "GroupChatAPI", "GroupMsgAPI", "JoinWayAPI", "MediaAPI"]

from bot.wecom.api.staff import StaffAPI  # noqa: E402 (staff turnover, issue 13)
from bot.wecom.api.transfer import GroupTransferAPI, TransferAPI  # noqa: E402

__all__ += ["GroupTransferAPI", "StaffAPI", "TransferAPI"]

from bot.wecom.api.tags import TagAPI  # noqa: E402 (store tags, issue 14)

__all__ += ["TagAPI"]

from bot.wecom.api.auth import MemberAuthAPI  # noqa: E402 (the ops console's WeCom login, issue 15)

__all__ += ["MemberAuthAPI"]
