"""Corp customer tags (企业客户标签, issue 14 item 4): every customer added through a store QR is tagged
with the store, and with 已进群 once they join its group, so HQ's CRM and WeCom's own tools can
segment by store. Marks are outbox rows (kind mark_tag); tag ids are cached in `corp_tag`."""
