"""The add → join funnel per store QR code, and QR health (stalled, full, gone)."""
