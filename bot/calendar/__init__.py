"""The content calendar: what the bot says in the groups, when (content_calendar/ as YAML + Jinja2)."""
