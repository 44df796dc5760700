"""JSON log lines on stdout, one object per line.

The access log (one line per RPC) is most of what is logged, so :class:`JsonLineHandler` can
also write a line straight from its fields: :func:`direct_handler` says when that gives the
same result as a ``LogRecord`` through ``logging`` (the process's own stdout handler is the
only one the record would reach), and the interceptor then skips the record, its handler
chain and the formatter's walk over the record's attributes.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

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
        entry = self._head(record.created, record.levelname, record.name, record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)

    def render(
        self, created: float, level: str, logger: str, msg: str, fields: Mapping[str, Any]
    ) -> str:
        """The line ``format`` gives a record of these, with ``fields`` as its ``extra``."""
        entry = self._head(created, level, logger, msg)
        entry.update(fields)
        return _encode(entry)

    def _head(self, created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
        return {"ts": self._timestamp(created), "level": level, "logger": logger, "msg": msg}

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


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """Writes JSON lines to a stream; also a line from its fields, with no ``LogRecord``."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._json = JsonFormatter()
        self.setFormatter(self._json)

    def write_fields(self, level: int, logger: str, msg: str, fields: Mapping[str, Any]) -> None:
        """Writes the line a record of ``logger`` at ``level`` with ``extra=fields`` would give.

        One render and one write and flush under the handler's lock, as ``emit`` does.
        """
        try:
            line = self._json.render(time.time(), logging.getLevelName(level), logger, msg, fields)
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self.stream.write(line + self.terminator)
                self.stream.flush()
        except RecursionError:  # as Handler.emit does (issue 36272)
            raise
        except Exception:  # as Handler.emit does: a log line never fails the caller
            self.handleError(_record_of(level, logger, msg, fields))

    @property
    def renders_fields(self) -> bool:
        """Whether ``write_fields`` gives ``emit``'s line (its formatter was not replaced)."""
        return self.formatter is self._json and not self.filters


def _record_of(level: int, logger: str, msg: str, fields: Mapping[str, Any]) -> logging.LogRecord:
    """A record of a line, for ``handleError``'s report only."""
    record = logging.LogRecord(logger, level, "", 0, msg, (), None)
    record.__dict__.update(fields)
    return record


def direct_handler(logger: logging.Logger, level: int) -> JsonLineHandler | None:
    """The handler that may write ``logger``'s lines at ``level`` directly, if there is one.

    That is when a record would reach exactly one handler, a filterless
    :class:`JsonLineHandler` that takes the level, and no logger filter on the way: then
    :meth:`JsonLineHandler.write_fields` gives the same line. Anything else (pytest's log
    capture, a handler added by an embedding application) gets records as before. The caller
    has checked ``logger.isEnabledFor(level)``.
    """
    if logger.filters:
        return None
    found: JsonLineHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None or type(handler) is not JsonLineHandler:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    if found is None or level < found.level or not found.renders_fields:
        return None
    return found


def configure_logging(level: str) -> None:
    """Sends every log record to stdout as JSON at ``level`` and above."""
    handler = JsonLineHandler(sys.stdout)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "urllib3", "s3transfer", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
