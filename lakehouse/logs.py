"""JSON log lines on stdout, one object per line."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


#: One encoder for every line: ``json.dumps(..., default=str)`` builds a new one per call.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``extra={...}`` fields become top-level keys.

    It runs for every RPC (the access log), so the timestamp's seconds are formatted once per
    second and one encoder serves every line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        """Renders the record."""
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)

    def _timestamp(self, created: float) -> str:
        """``created`` in UTC, ISO 8601 to the millisecond, as ``datetime.isoformat`` gives it."""
        # datetime.fromtimestamp's own rounding: to the microsecond, half to even.
        fraction, whole = math.modf(created)
        micros = round(fraction * 1e6)
        seconds = int(whole)
        if micros >= 1_000_000:
            seconds, micros = seconds + 1, micros - 1_000_000
        if seconds != self._second:
            self._second = seconds
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{self._second_text}.{micros // 1000:03d}+00:00"


def configure_logging(level: str) -> None:
    """Sends every log record to stdout as JSON at ``level`` and above."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "urllib3", "s3transfer", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
