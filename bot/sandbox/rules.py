"""WeCom's rules as settings: each UNCONFIRMED fact of shared/wecom-facts.md is a knob."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Rules:
    token_ttl: int = 7200                 # gettoken expires_in
    # gettoken while the corp's token is valid answers the same token. CONFIRMED: WeCom's doc 91039 as
    # published until 2020 (https://work.weixin.qq.com/api/doc/90000/90135/91039): 「有效期内重复获取
    # 返回相同结果，过期后获取会返回新的access_token」; the 2024/03/26 page
    # (https://developer.work.weixin.qq.com/document/path/91039) no longer says it, nor the opposite.
    # What expires_in says then is UNCONFIRMED (the doc: 「有效期通过返回的expires_in来传达」):
    # remaining = the token's remaining lifetime (default); full = token_ttl whatever remains (the
    # token still runs out on time and calls get 42001).
    gettoken_repeat: str = "remaining"    # remaining | full
    welcome_code_ttl: float = 20.0        # send_welcome_msg window
    scan_join_limit: int = 200            # scan-to-join stops here (groups hold 500)
    group_capacity: int = 500
    # Per corp, per API: 10,000/min (150,000/h), 45009 past it: doc 90312 via its public copy doc 90454
    # (shared/wecom-facts.md §8.2). How WeCom draws the minute is UNCONFIRMED: here a clock minute,
    # counted as calls arrive, so a call the bot let out at 59.9 s that lands at 00.1 s counts in the
    # next minute (the bot's pacers keep 2 s of slack for it: bot/wecom/pacer.py).
    per_api_per_minute: int = 10_000
    api_limits: dict[str, int] = field(default_factory=dict)  # per-endpoint overrides
    # message/send, doc 90236: 「每应用对同一个成员不可超过30次/分钟，1000次/小时，超过部分会被丢弃不下发」.
    app_msg_per_member_minute: int = 30
    app_msg_per_member_hour: int = 1000
    # message/send with enable_duplicate_check, doc 90236: 「在一定时间间隔内，同样内容（请求json）的消息，
    # 不会重复收到」. What WeCom answers for the dropped one is UNCONFIRMED: errcode 0 here.
    duplicate_check: bool = True
    # remind_groupmsg_send past 3 in 24 h: 41094 「群发提醒超过频率限制」 (doc 90313's list; that it is
    # this rule's code is UNCONFIRMED)
    remind_limit_errcode: int = 41094
    # groupchat/get of a dismissed group: UNCONFIRMED which code (40050 chatid不存在, 49008 群已经解散)
    dismissed_group_errcode: int = 40050
    # Does WeCom itself take a dismissed group out of a join way's chat_id_list? Doc 99547 says nothing:
    # UNCONFIRMED. Off, so the bot must repair the join way itself (update_join_way).
    dismissed_leaves_join_way: bool = False
    receive_cap: str = "daily_1"          # daily_1 | weekly_7 | days_in_month
    groupmsg_confirm: str = "manual"      # manual | immediate: does the owner confirm at once?
    remind_per_day: int = 3               # doc 97610: 「24小时内每个群发最多触发三次提醒」
    groupchat_get_lag: float = 0.0        # seconds a new member stays invisible to groupchat/get
    late_answer_seconds: float = 6.0      # a `late` fault answers after this (past the client's timeout)
    callback_timeout: float = 5.0         # WeCom waits this long for the bot's answer
    # CONFIRMED (doc 96466 as copied at blog.csdn.net/weixin_42524703/article/details/117647149, shared/
    # wecom-facts.md §1.3): 「企业微信服务器在五秒内收不到响应会断掉连接，并且重新发起请求，总共重试三次」;
    # deploy/nginx.conf budgets the proxy's callback timeouts inside it.
    redeliveries: int = 3                 # then redelivers the same payload up to this many times
    media_ttl: float = 3 * 86400
    broken_join_states: list[str] = field(default_factory=list)  # scanning these group QRs fails for all
    # -- staff turnover (bot/sandbox/staff.py); sources: doc 94100 / 92127 / 95703 / 90313 via SDK text,
    # on-job customer transfer doc 92125 (hexdocs WeChat.Work.Customer.Transfer)
    # transfer_customer (both kinds): 「最多一次转移100个客户」
    transfer_batch_max: int = 100
    # a transferred customer is taken over 24 hours after the call unless they refuse; transfer_result
    # status 1 接替完毕, 2 等待接替, 3 客户拒绝, 4 接替成员客户达到上限
    transfer_takeover_seconds: float = 86400
    # 「接替成员客户达到上限」 (status 4): the successor's customer count at which WeCom stops. The real
    # number depends on the corp's licence: UNCONFIRMED, a knob (tests lower it)
    customer_limit: int = 50_000
    # on-job: 「90个自然日内，在职成员的每位客户仅可被转接2次」 → per-customer errcode 40128; and
    # 「…每个客户群仅可被转接2次」 for groupchat/onjob_transfer
    onjob_transfers_per_90_days: int = 2
    # the errcode of the group case is UNCONFIRMED (40128 assumed, as for customers)
    onjob_group_transfer_limit_errcode: int = 40128
    # transfer_success_msg: at most 200 characters (doc 92125 via SDK text)
    transfer_success_msg_max: int = 200
    # a customer already waiting for a takeover is transferred again: per-customer errcode UNCONFIRMED
    transfer_pending_errcode: int = 40129
    # groupchat/transfer: 「群主离职了的客户群，才可继承」 (90500 otherwise); chat_id_list ≤ 100;
    # 「同一个人的群，限制每天最多分配300个给新群主」 (errcode past it UNCONFIRMED: a knob)
    group_transfer_batch_max: int = 100
    group_transfers_per_day: int = 300
    group_transfer_daily_errcode: int = 45009
    # get_unassigned_list: page_size ≤ 1000 (doc 92124 via SDK text)
    unassigned_page_max: int = 1000
    # -- group statistics (bot/sandbox/stats.py): externalcontact/groupchat/statistic and
    # statistic_group_by_day, doc 92133 「获取「群聊数据统计」数据」 (96359 for third-party apps, read
    # 2023/12/01 in shared/wecom-facts.md §6.3; request fields also in node-easywechat
    # src/Work/ExternalContact/StatisticsClient.ts, response {total, next_offset, items} in PowerWeChat
    # src/work/externalContact/statistics/response/responseStatistic.go).
    # CONFIRMED: owner_filter.userid_list ≤ 100; day_begin_time/day_end_time are day starts, the span
    # ≤ 30 days, back to 180 days; daily granularity, up to yesterday only (no same-day figures).
    stats_owner_max: int = 100
    stats_span_days: int = 30
    stats_history_days: int = 180
    stats_limit_max: int = 1000
    # UNCONFIRMED: which errcode WeCom answers past those bounds (more than 100 owners, a day from today
    # on, a span over 30 days): 40058 invalid parameter assumed, a knob.
    stats_bounds_errcode: int = 40058
    # UNCONFIRMED: whether new_member_cnt counts members who joined inside the span and left since;
    # the sandbox counts the members still in the group (it keeps no join log).
    # -- corp customer tags 企业客户标签 (bot/sandbox/tags.py). Doc 92117 管理企业标签 (read from its 代开发
    # copy, doc 96320 [2023/12/01], and from SDKs quoting it: WxJava, metacpan QQ::weixin::work,
    # hexdocs wechat_sdk); doc 92118 mark_tag (read from its 第三方 copy, doc 92697 [2023/12/01]).
    # CONFIRMED (doc 92117): add_corp_tag takes group_id or group_name, order, tag[{name, order}] (agentid
    # only for old third-party suites) and answers tag_group{group_id, group_name, create_time, order,
    # tag[{id, name, create_time, order}]}; 「如果填写的groupname已经存在，则会在此标签组下新建标签」;
    # group_id given → group_name and order ignored; 「不支持创建空标签组」; 「标签组内的标签不可同名，如果
    # 传入多个同名标签，则只会创建一个」. get_corp_tag_list takes tag_id[] and group_id[]: both empty → all;
    # both → group_id only. 「应用仅能编辑和删除本应用创建的标签」.
    # CONFIRMED (doc 92117): group and tag names 「最长为30个字符」 (the admin console allows 15 [3rd:
    # college.wshoto.com]). Which errcode a longer name gets is UNCONFIRMED: 40072 不合法的标签名字长度
    # (doc 90313 via go-workwx) assumed.
    tag_name_max: int = 30
    tag_name_errcode: int = 40072
    # Tags per corp: doc 96320's current text (as copied into a repository's API notes) says 「每个企业最多可
    # 配置10000个企业标签」; older copies (WxJava javadoc, hexdocs) and errcode 40126 「企业标签个数达到上限，
    # 最多为3000个」 (doc 90313 via go-workwx) say 3000. Which applies to a corp today: UNCONFIRMED, a knob;
    # 40126 as the errcode's meaning is CONFIRMED.
    corp_tag_limit: int = 10_000
    corp_tag_limit_errcode: int = 40126
    # add_corp_tag of a name already in the group (a second request, not one request naming it twice):
    # UNCONFIRMED. 40071 「不合法的标签名字，标签名字已经存在」 (SDK errcode tables) by default; 0 = WeCom
    # answers the existing tag as if created.
    duplicate_tag_errcode: int = 40071
    # mark_tag (doc 92118): userid, external_userid, add_tag[], remove_tag[]; 「add_tag和remove_tag不可同时为空」
    # and 「请确保external_userid是userid的外部联系人」 are CONFIRMED; 「每个成员对同一个客户最多可以添加3000个
    # 标签」 CONFIRMED. The errcode for a customer who does not follow userid is UNCONFIRMED: 84061 不存在
    # 外部联系人的关系 (doc 90313) assumed. A tag id that does not exist (deleted in the admin console):
    # 40068 「不合法的标签ID … 指定的标签ID不存在」 (doc 90313 via go-workwx, CONFIRMED as a meaning; that
    # mark_tag answers it, UNCONFIRMED). Marking a tag the customer already has: errcode 0 (UNCONFIRMED).
    # API changes (mark_tag too) push no edit_external_contact callback (doc 96361, shared/wecom-facts.md §1.3).
    mark_tag_not_contact_errcode: int = 84061
    invalid_tag_errcode: int = 40068
    tags_per_contact_max: int = 3000
    # edit/del of a tag the app did not create: the errcode is UNCONFIRMED (48002 API接口无权限调用 assumed;
    # one vendor page says 301002). A group left without tags disappears: UNCONFIRMED.
    not_own_tag_errcode: int = 48002
    # -- the chat-toolbar sidebar /sidebar (bot/broadcast/toolbar.py, bot/static/toolbar.js). Client-side
    # JS-SDK rules: nothing here plays them (the browser test stubs `wx`), so they are written down here.
    # CONFIRMED getCurExternalChat (doc 98531 「获取当前客户群的群ID」, and its wx.invoke form): 「本接口必须
    # 使用应用身份进行注册」 (wx.agentConfig, jsApiList naming it); 「从客户群或班级群的聊天工具栏进入页面时
    # 才可成功调用」, getContext entry `group_chat_tools`; answers err_msg 'getCurExternalChat:ok' and
    # `chatId`; 'fail no permission' / 'fail without context of external contact' otherwise. A self-built
    # app needs 客户联系 permission (configured as an app that may call 客户联系).
    # CONFIRMED getContext (doc 98419 ww.getContext, 94332 wx.qy.getContext): entry is one of contact_profile,
    # single_chat_tools, group_chat_tools, chat_attachment, single_kf_tools, chain_single_chat_tools,
    # chain_group_chat_tools, internal_group_chat_board, normal; old form wx.invoke('getContext') answers
    # err_msg 'getContext:ok' and `entry` (doc 100338's example).
    # CONFIRMED sendChatMessage (doc 96935 「分享消息到当前会话」, 93863, 98539): msgtype text / image / video /
    # file / news / miniprogram; text.content, image|video|file.mediaid (素材管理 media ids, not 公众平台's),
    # news {link, title, desc, imgUrl}, miniprogram {appid, title, imgUrl (a URL), page ending .html};
    # enterChat (mobile ≥ 3.1.10); 「必须先成功调用agentConfig，否则调用时会报“no permission”错误」; from the
    # single/group chat toolbar or the chat attachment bar only. The sidebar sends no miniprogram: the
    # calendar's carries a pic_media_id and sendChatMessage wants an image URL.
    # UNCONFIRMED: whether WeCom appends anything to the toolbar page's URL when it opens it (the JS-SDK
    # signature covers the URL exactly; /sidebar signs what the request asked for, query included).

    def update(self, **changes) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown rule(s): {', '.join(sorted(unknown))}")
        for k, v in changes.items():
            setattr(self, k, v)

    def as_dict(self) -> dict:
        return asdict(self)
