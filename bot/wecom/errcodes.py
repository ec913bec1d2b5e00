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

# Client-side codes (negative, beyond WeCom's own -1): the call never got a WeCom answer.
HTTP_ERROR = -900                 # non-2xx HTTP status
NETWORK_ERROR = -901              # timeout, reset, refused
RETRY_BUDGET_SPENT = -902
BAD_RESPONSE = -903               # not JSON
DATA_LAG = -904                   # WeCom answered, but not yet with what its callback announced
PACED = -905                      # not sent: the per-API limit has no room for a while (retry_after)

# What WeCom answers for a contact-way or join-way config_id it no longer has (41044; 40058 for some APIs).
CONFIG_GONE = frozenset({INVALID_CONFIG_ID, INVALID_PARAMETER})
TOKEN_STALE = frozenset({INVALID_SECRET, INVALID_ACCESS_TOKEN, ACCESS_TOKEN_EXPIRED})
RETRYABLE = frozenset({SYSTEM_BUSY, API_FREQ_LIMIT, API_CONCURRENCY_LIMIT, HTTP_ERROR, NETWORK_ERROR, PACED})
