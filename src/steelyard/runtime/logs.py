"""Logging set-up for `steelyard run`: text for people, JSON lines for log pipelines (`--log-format`).

A JSON line carries `time` (RFC 3339, UTC), `level`, `logger`, `message`, and, for records logged with
`extra={"fields": {...}}` (the access log does), those fields as top-level keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO

__all__ = ["JsonFormatter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(log_format: str = "text", level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Configure the root logger once; a second call replaces the handler (tests call it repeatedly)."""
    if log_format not in ("text", "json"):
        raise ValueError(f"unknown log format {log_format!r} (use text or json)")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_steelyard", False)]:
        root.removeHandler(old)
    handler._steelyard = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
