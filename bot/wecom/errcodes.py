"""WeCom errcodes by meaning (shared/wecom-facts.md §9). Callers branch on these, never on errmsg."""

SYSTEM_BUSY = -1
OK = 0
INVALID_SECRET = 40001
INVALID_USERID = 40003
INVALID_MEDIA_ID = 40007
INVALID_ACCESS_TOKEN = 40014
INVALID_PARAMETER = 40058
INVALID_CHAT_ID = 40050
INVALID_EXTERNAL_USERID = 40096
MISSING_ACCESS_TOKEN = 41001
INVALID_CONFIG_ID = 41044
WELCOME_CODE_MISSING = 41049
WELCOME_CODE_INVALID = 41050      # past the 20 s window, or never issued
WELCOME_ALREADY_SENT = 41051      # delivered: done
WELCOME_BEING_SENT = 41096        # another app is sending: a retry inside the window is allowed
ACCESS_TOKEN_EXPIRED = 42001
CONTENT_TOO_LONG = 45002
API_FREQ_LIMIT = 45009
API_CONCURRENCY_LIMIT = 45033
NO_PERMISSION = 48002
ALL_RECIPIENTS_INVALID = 81013
NOT_CUSTOMER_GROUP = 90501
# staff turnover (doc 90313 via SDK text)
NOT_RESIGNED = 40097              # 该成员尚未离职: a resigned/* call for a member still employed
TRANSFER_LIMIT = 40128            # the customer was transferred twice in 90 days already (on-job)
OAUTH_CODE_INVALID = 40029        # auth/getuserinfo: 不合法的oauth_code (used, over 5 minutes, or never issued)
USER_NOT_FOUND = 60111            # UserID不存在: the member was deleted
NO_CONTACT_RELATION = 84061       # 不存在外部联系人的关系 (externalcontact/list of a member with no customers)
OWNER_NOT_RESIGNED = 90500        # groupchat/transfer of a group whose owner did not resign
# corp customer tags (doc 90313 via go-workwx `errcodes/mod.go`)
INVALID_TAG_ID = 40068            # 不合法的标签ID: 「标签ID未指定，或者指定的标签ID不存在」 (deleted at WeCom)
TAG_NAME_TAKEN = 40071            # 不合法的标签名字 (some SDK lists: 「标签名字已经存在」)
TAG_NAME_LENGTH = 40072           # 不合法的标签名字长度
CORP_TAG_LIMIT = 40126            # 企业标签个数达到上限
NOT_OWN_TAG = 48002               # edit_corp_tag of a tag another app or the console made: UNCONFIRMED (sandbox rules)

# Client-side codes (negative, beyond WeCom's own -1): the call never got a WeCom answer.
HTTP_ERROR = -900                 # non-2xx HTTP status
NETWORK_ERROR = -901              # timeout, reset, refused
RETRY_BUDGET_SPENT = -902
BAD_RESPONSE = -903               # not JSON
DATA_LAG = -904                   # WeCom answered, but not yet with what its callback announced
PACED = -905                      # not sent: the per-API limit has no room for a while (retry_after)
UNKNOWN_OUTCOME = -906            # sent, and the answer was lost (timeout, reset, 5xx): WeCom may have done it
LEASE_LOST = -907                 # not sent: the outbox row's lease could not cover another attempt

# What WeCom answers for a contact-way or join-way config_id it no longer has (41044; 40058 for some APIs).
CONFIG_GONE = frozenset({INVALID_CONFIG_ID, INVALID_PARAMETER})
TOKEN_STALE = frozenset({INVALID_SECRET, INVALID_ACCESS_TOKEN, ACCESS_TOKEN_EXPIRED})
RETRYABLE = frozenset({SYSTEM_BUSY, API_FREQ_LIMIT, API_CONCURRENCY_LIMIT, HTTP_ERROR, NETWORK_ERROR, PACED})
# WeCom answered, and what it answered says the call was not done: a retry cannot double anything.
NOT_DONE = frozenset({SYSTEM_BUSY, API_FREQ_LIMIT, API_CONCURRENCY_LIMIT})
