"""Welcoming a new contact with the store's group QR code (send_welcome_msg, 20 s window)."""
