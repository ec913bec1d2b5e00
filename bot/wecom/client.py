"""The one WeCom client: every call to WeCom goes through `WeComClient._request`.

A wechatpy WeChatClient with what production needs and wechatpy leaves out (shared/STYLE.md §1):
the configured base URL for every call including gettoken, timeouts, one token refresh on
40001/40014/42001 (wechatpy retries those without bound), back-off on -1/45009/45033/5xx/network
errors inside a retry budget, uploads re-sent from bytes, a token shared across processes, and
the endpoints wechatpy lacks (join ways, the groupmsg v2 family, need_name).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import contextmanager
from collections.abc import Callable

import requests
import urllib3
from wechatpy.exceptions import WeChatClientException
from wechatpy.work import WeChatClient

from bot.clock import Clock, SystemClock
from bot.wecom import errcodes
from bot.wecom.api import AppMessageAPI, ContactWayAPI, GroupChatAPI, GroupMsgAPI, JoinWayAPI, MediaAPI
from bot.wecom.api import GroupTransferAPI, StaffAPI, TransferAPI
from bot.wecom.api import TagAPI
from bot.wecom.api import MemberAuthAPI
from bot.wecom.pacer import NoRoom, Pacer, SqlPacer
from bot.wecom.token_store import MemoryTokenStore, TokenStore

log = logging.getLogger(__name__)


class WeComError(Exception):
    """A WeCom call that failed for good: branch on `errcode` (bot.wecom.errcodes)."""

    def __init__(self, errcode: int, errmsg: str, endpoint: str, retry_after: float | None = None,
                 maybe_done: bool = False):
        super().__init__(f"{endpoint}: {errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.endpoint = endpoint
        self.retry_after = retry_after
        # an attempt's answer was lost on the way (a resendable call that gave up): WeCom may have done it
        self.maybe_done = maybe_done


def _endpoint(url_or_endpoint: str) -> str:
    """Path after cgi-bin/, without the query: what logs and metrics name (never the token)."""
    return url_or_endpoint.split("cgi-bin/", 1)[-1].split("?", 1)[0]


CallHook = Callable[[str, int, float], None]  # (endpoint, errcode, seconds)
LeaseGuard = Callable[[float], bool]          # (seconds the next attempt may take) -> may it start?

# Calls WeCom would do twice if the first one's answer was lost and it was sent again: a second mass
# message task, a second QR config, a second reminder. After a lost answer the client does not
# resend them; it raises UNKNOWN_OUTCOME and the caller reconciles with WeCom first (the outbox
# marks the row uncertain; sync looks the config up by state). Everything else is safe to resend:
# reads, overwrites (update_*), deletes, welcome codes (single use: 41051), message/send (the
# duplicate check drops the repeat), media uploads (a second media_id costs nothing).
WRITES_ONCE = frozenset({
    "externalcontact/add_msg_template",
    "externalcontact/add_contact_way",
    "externalcontact/groupchat/add_join_way",
    "externalcontact/remind_groupmsg_send",
    # a transfer is counted by WeCom (two per customer or group in 90 days, 300 groups a day): after a
    # lost answer the caller reads transfer_result / the group's owner before calling again
    "externalcontact/resigned/transfer_customer",
    "externalcontact/transfer_customer",
    "externalcontact/groupchat/transfer",
    "externalcontact/groupchat/onjob_transfer",
})


def never_sent(exc: requests.RequestException) -> bool:
    """The request never left: no connection was made (refused, DNS, connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        cause = exc.args[0] if exc.args else None
        reason = getattr(cause, "reason", cause)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


class WeComClient(WeChatClient):
    external_contact_group_chat = GroupChatAPI()
    media = MediaAPI()
    join_way = JoinWayAPI()
    groupmsg = GroupMsgAPI()
    app_message = AppMessageAPI()
    contact_way = ContactWayAPI()
    staff = StaffAPI()
    transfer = TransferAPI()
    group_transfer = GroupTransferAPI()
    corp_tags = TagAPI()              # 企业客户标签 (store tags, issue 14)
    member_auth = MemberAuthAPI()     # auth/getuserinfo: the ops console's WeCom login (issue 15)

    def __init__(self, corp_id: str, secret: str, *, agent_id: int, api_base_url: str,
                 token_store: TokenStore | None = None, clock: Clock | None = None,
                 timeout: float = 5.0, max_attempts: int = 4, backoff_base: float = 0.25,
                 backoff_cap: float = 4.0, on_call: CallHook | None = None, calls_per_minute: int = 10_000,
                 calls_per_hour: int = 0, pacer: Pacer | SqlPacer | None = None):
        super().__init__(corp_id, secret, timeout=timeout, auto_retry=False)
        self.API_BASE_URL = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self.agent_id = agent_id
        self.clock = clock or SystemClock()
        self.tokens = token_store or MemoryTokenStore(self.clock)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_call = on_call
        # SqlPacer: one limit shared by every process (PostgreSQL); else this process paces itself
        self.pacer = pacer or Pacer(self.clock, calls_per_minute, calls_per_hour)
        self.max_pace_wait = 5.0   # longer, and a call made under a lease is handed back (see holding_lease)
        self._leased = threading.local()
        # Connection pool sized for the worker threads that share this client.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)

    @contextmanager
    def holding_lease(self, guard: LeaseGuard | None = None):
        """Calls in this block run for a claimed outbox row. Rather than wait a minute for room under
        the rate limit they fail with PACED; and before every attempt `guard(seconds)` must say the
        row's lease still covers that attempt, else LEASE_LOST: a worker never calls WeCom for a row
        another worker may have taken back."""
        self._leased.active, self._leased.guard = True, guard
        try:
            yield
        finally:
            self._leased.active, self._leased.guard = False, None

    def _may_attempt(self, endpoint: str) -> None:
        guard = getattr(self._leased, "guard", None)
        if guard is not None and not guard(self.timeout + 1.0):
            raise WeComError(errcodes.LEASE_LOST, "the outbox row's lease does not cover another attempt", endpoint)

    # -- token ---------------------------------------------------------------------------
    @property
    def access_token(self) -> str:
        return self.tokens.get(self.access_token_key, self._gettoken)

    def fetch_access_token(self) -> dict:
        token, expires_in = self._gettoken()
        return {"access_token": token, "expires_in": expires_in}

    def _gettoken(self) -> tuple[str, int]:
        """gettoken at the configured base URL, with a timeout; 40001 here is a wrong secret."""
        started = time.perf_counter()
        try:
            res = self._http.get(f"{self.API_BASE_URL}gettoken", timeout=self.timeout,
                                 params={"corpid": self.corp_id, "corpsecret": self.secret})
            res.raise_for_status()
            body = res.json()
        except requests.RequestException as e:
            self._hook("gettoken", errcodes.NETWORK_ERROR, started)
            raise WeComError(errcodes.NETWORK_ERROR, type(e).__name__, "gettoken") from e
        except ValueError:
            raise WeComError(errcodes.BAD_RESPONSE, "gettoken answered no JSON", "gettoken") from None
        errcode = int(body.get("errcode", 0))
        self._hook("gettoken", errcode, started)
        if errcode:
            raise WeComError(errcode, body.get("errmsg", ""), "gettoken")
        return body["access_token"], int(body.get("expires_in", 7200))

    # -- the one request path ----------------------------------------------------------
    def backoff(self, attempt: int, errcode: int) -> float:
        # A frequency limit blocks for its window: wait longer there than for a busy system.
        base = self.backoff_base * (4 if errcode in (errcodes.API_FREQ_LIMIT, errcodes.API_CONCURRENCY_LIMIT) else 1)
        return min(self.backoff_cap, base * 2 ** attempt) * (0.5 + random.random() / 2)

    def _request(self, method, url_or_endpoint, **kwargs):
        endpoint = _endpoint(url_or_endpoint)
        once = endpoint in WRITES_ONCE
        lost = False   # some attempt may have reached WeCom and lost its answer
        refreshed = False
        last = (errcodes.RETRY_BUDGET_SPENT, "retry budget spent")
        attempt = 0
        while attempt < self.max_attempts:
            started = time.perf_counter()
            token = None
            try:
                params = kwargs.setdefault("params", {})
                if isinstance(params, dict):
                    token = params.setdefault("access_token", self.access_token)
                try:
                    self.pacer.acquire(endpoint, self.max_pace_wait if getattr(self._leased, "active", False)
                                        else float("inf"))
                except NoRoom as e:
                    raise WeComError(errcodes.PACED, str(e), endpoint, retry_after=e.wait) from None
                self._may_attempt(endpoint)
                result = super()._request(method, url_or_endpoint, **kwargs)
                self._hook(endpoint, 0, started)
                return result
            except WeChatClientException as e:
                status = getattr(e.response, "status_code", None)
                errcode = e.errcode if e.errcode is not None else errcodes.HTTP_ERROR
                self._hook(endpoint, errcode, started)
                last = (errcode, str(e.errmsg) if e.errmsg is not None else f"HTTP {status}")
                if errcode in errcodes.TOKEN_STALE and not refreshed:
                    refreshed = True  # once: a wrong secret must not loop
                    if token:
                        self.tokens.invalidate(self.access_token_key, token)
                    kwargs["params"].pop("access_token", None)
                    log.info("%s: token rejected (%s), refreshing once", endpoint, errcode)
                    continue  # the refresh does not spend an attempt
                if errcode == errcodes.HTTP_ERROR and status is not None and status < 500:
                    raise WeComError(errcode, last[1], endpoint) from e
                if errcode not in errcodes.RETRYABLE:
                    raise WeComError(errcode, last[1], endpoint) from e
                if errcode not in errcodes.NOT_DONE:   # a 5xx: the gateway may have passed it on
                    lost = True
                    if once:
                        raise WeComError(errcodes.UNKNOWN_OUTCOME, f"{last[1]}: answer lost", endpoint) from e
            except requests.RequestException as e:
                self._hook(endpoint, errcodes.NETWORK_ERROR, started)
                last = (errcodes.NETWORK_ERROR, type(e).__name__)
                if not never_sent(e):
                    lost = True
                    if once:
                        raise WeComError(errcodes.UNKNOWN_OUTCOME, f"{last[1]}: answer lost", endpoint) from e
            except WeComError as e:  # from gettoken, the pacer handing the call back, or the lease guard
                if e.errcode in (errcodes.PACED, errcodes.LEASE_LOST) or e.errcode not in errcodes.RETRYABLE:
                    raise
                last = (e.errcode, e.errmsg)
            attempt += 1
            if attempt < self.max_attempts:
                delay = self.backoff(attempt - 1, last[0])
                log.info("%s: %s %s, retry %d in %.2fs", endpoint, last[0], last[1], attempt, delay)
                self.clock.sleep(delay)
        raise WeComError(last[0], f"{last[1]} (after {self.max_attempts} attempts)", endpoint, maybe_done=lost)

    def _hook(self, endpoint: str, errcode: int, started: float) -> None:
        if self.on_call:
            self.on_call(endpoint, errcode, time.perf_counter() - started)

    # -- helpers over the families -------------------------------------------------------
    def fetch_url(self, url: str) -> bytes:
        """Bytes of a WeCom-hosted resource (a join way's qr_code image), with timeout and retries."""
        for attempt in range(self.max_attempts):
            try:
                res = self._http.get(url, timeout=self.timeout)
                if res.status_code < 500:
                    res.raise_for_status()
                    return res.content
            except requests.HTTPError as e:
                raise WeComError(errcodes.HTTP_ERROR, str(e), "fetch_url") from e
            except requests.RequestException:
                pass
            self.clock.sleep(self.backoff(attempt, errcodes.NETWORK_ERROR))
        raise WeComError(errcodes.RETRY_BUDGET_SPENT, f"could not fetch {url}", "fetch_url")

    def agent_ticket(self) -> str:
        """The app's jsapi ticket (ticket/get?type=agent_config) for wx.agentConfig; shared like the token
        (the ticket is limited to 100 fetches an hour per app)."""
        def fetch() -> tuple[str, int]:
            res = self.jsapi.get_agent_ticket()
            return res["ticket"], int(res.get("expires_in", 7200))
        return self.tokens.get(f"{self.access_token_key}:agent_ticket", fetch)

    def corp_ticket(self) -> str:
        """The corp's jsapi ticket (get_jsapi_ticket) for wx.config."""
        def fetch() -> tuple[str, int]:
            res = self.jsapi.get_ticket()
            return res["ticket"], int(res.get("expires_in", 7200))
        return self.tokens.get(f"{self.access_token_key}:corp_ticket", fetch)
