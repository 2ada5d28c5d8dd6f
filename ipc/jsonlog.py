"""Per-process JSON-lines logs: `<log-dir>/<actor>.jsonl`, one object per line, rotated by size.

Every process of the tree (supervisor and actors) logs through this, so an operator can `jq` any actor's
file the same way. Fields: time, level, actor, pid, event, message, plus request_id / trace_id and any other
`extra=` keys the caller gives.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=` and is worth logging.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, actor: str) -> None:
        super().__init__()
        self.actor = actor

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "actor": self.actor,
            "pid": record.process,
            "event": getattr(record, "event", record.name),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in obj:
                obj[key] = value
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


def setup(actor: str, log_dir: Path | str | None, level: str = "INFO", max_bytes: int = 20 << 20, backups: int = 5) -> None:
    """Route the root logger to `<log_dir>/<actor>.jsonl` (and stderr as JSON when no dir is given)."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            Path(log_dir) / f"{actor}.jsonl", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(actor))
    root.addHandler(handler)
    # Library chatter (aiohttp access lines, transformers warnings) stays, but at warning level and up.
    for noisy in ("aiohttp.access", "transformers", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
