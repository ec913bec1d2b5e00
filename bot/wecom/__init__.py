"""Everything that speaks WeCom's protocol. wechatpy stops here: the domain never imports it."""
