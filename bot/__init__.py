"""wecom-bot: a WeCom community-operations bot for retail store groups."""
