"""WeCom API families wechatpy lacks or gets wrong; one small class per family."""

from bot.wecom.api.group_chat import GroupChatAPI
from bot.wecom.api.groupmsg import GroupMsgAPI
from bot.wecom.api.join_way import JoinWayAPI
from bot.wecom.api.media import MediaAPI
from bot.wecom.api.message import AppMessageAPI

__all__ = ["AppMessageAPI", "GroupChatAPI", "GroupMsgAPI", "JoinWayAPI", "MediaAPI"]
