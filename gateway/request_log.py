"""The gateway's structured logs: one JSON object per line, carrying the request id it serves.

`REQUEST_ID` holds the id of the ScoreApplication call the current thread serves (set by the
servicer for the call's duration), so every line logged on its behalf, by the servicer or the
partner client, carries it without each call site passing it. `JsonLines` formats records as::

    {"time": "2026-11-23T15:04:05.123+00:00", "level": "INFO", "logger": "gateway.service",
     "request_id": "6f1c...", "message": "[Gateway] request 6f1c... applicant 9a0b...: approve"}

Messages hold keyed pseudonyms, never raw identifiers (the call sites see to that).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["REQUEST_ID", "JsonLines", "log_json_lines", "serving_request"]

REQUEST_ID: ContextVar[str | None] = ContextVar("cobrand_request_id", default=None)

# One encoder for every line: json.dumps with an option builds a new one each time.
_LINE = json.JSONEncoder(ensure_ascii=False)


@contextmanager
def serving_request(request_id: str) -> Iterator[None]:
    """Tag what is logged in this block with `request_id`."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class JsonLines(logging.Formatter):
    """A record as one JSON line: time (UTC), level, logger, request id if any, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _LINE.encode(entry)


def log_json_lines() -> None:
    """Format every handler of the root logger as `JsonLines` (one added if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(JsonLines())
