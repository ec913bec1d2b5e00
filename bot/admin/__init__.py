"""The ops console (/admin): WeCom login, the dashboard, store detail and the calendar preview."""
