"""Making WeCom match the configured stores (`sync`), and reading the WeCom side of QR health."""

from bot.provisioning.sync import Provisioner, StoreSyncResult, SyncReport, pick_join_chats

__all__ = ["Provisioner", "StoreSyncResult", "SyncReport", "pick_join_chats"]
