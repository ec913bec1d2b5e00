"""Logging: structured lines (key=value, or JSON with `--log-format json`) for the bot, uvicorn and
its access log alike; and a flood of garbage requests must not become a flood of log lines."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone


class RateLimitedLog:
    """At most `per_minute` lines a minute through `logger`; what it holds back is counted and told
    in the first line of the next minute. Monotonic time: this is about the log, not the domain."""

    def __init__(self, logger: logging.Logger, per_minute: int = 20, monotonic=time.monotonic):
        self.logger = logger
        self.per_minute = per_minute
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._window = -1
        self._told = 0
        self._held = 0

    def warning(self, msg: str, *args) -> bool:
        """Log unless this minute's lines are spent; True when it logged."""
        with self._lock:
            window = int(self.monotonic() // 60)
            held = 0
            if window != self._window:
                self._window, self._told, held, self._held = window, 0, self._held, 0
            if self._told >= self.per_minute:
                self._held += 1
                return False
            self._told += 1
        if held:
            self.logger.warning("%d similar lines were held back in the last minute", held)
        self.logger.warning(msg, *args)
        return True


# -- structured lines ----------------------------------------------------------------------------
# What every LogRecord carries; anything else on a record came from `extra=` and is printed too.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "", 0, "", None, None))) | {"message", "asctime"}
LOG_FORMATS = ("kv", "json")


def _fields(record: logging.LogRecord) -> dict:
    out = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
           "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        # uvicorn's access line: (client, method, path, http version, status) as its own fields
        out.update(zip(("client", "method", "path", "http", "status"), record.args))
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_") and key not in out:
            out[key] = value
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


class KeyValueFormatter(logging.Formatter):
    """key=value pairs, values quoted when they hold spaces, quotes or `=` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())


def _kv_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if text and not any(ch in text for ch in ' "=\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each line (as logging.lastResort does), not as it was set up."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def configure(level: int, fmt: str = "kv") -> None:
    """The root logger's one handler, as logging.basicConfig: a root someone configured already is
    left alone (pytest's, an embedding application's)."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    logging.basicConfig(level=level, handlers=[handler])


def uvicorn_log_config() -> dict:
    """uvicorn's `log_config`: its loggers keep no handlers of their own and pass every line, the
    access log's included, to the root handler of `configure`, so one format covers them all."""
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {name: {"level": "INFO", "handlers": [], "propagate": True}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}
