"""Group broadcasts at the calendar's slots, within WeCom's mass-message rules (DESIGN §2)."""
