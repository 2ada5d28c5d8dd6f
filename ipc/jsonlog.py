"""Per-process JSON-lines logs: `<log-dir>/<actor>.jsonl`, one object per line, rotated by size, and the same
lines on stderr when asked (journald picks them up under systemd).

Every process of the tree (supervisor and actors) logs through this, so an operator can `jq` any actor's
file the same way. Fields: time, level, actor, pid, event, message, plus request_id / trace_id and any other
`extra=` keys the caller gives. A line written while a request is being served (ipc.tracing's context
variables are set) gets that request's request_id and trace_id without the caller naming them.

Secrets never reach a line: the configured keys are replaced wherever they appear (message, extras,
exception text), and any extra whose name says it holds a secret is replaced whole.
A log write that fails (disk full, file removed under us) is dropped: logging must never kill an actor.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from . import tracing

# Attributes every LogRecord has; anything else on a record came from `extra=` and is worth logging.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_SECRET_FIELDS = ("authorization", "api_key", "admin_key", "password", "secret", "token_value")
REDACTED = "[REDACTED]"


class JsonFormatter(logging.Formatter):
    def __init__(self, actor: str, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.actor = actor
        self.secrets = [s for s in secrets or [] if s]

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
            if key not in _STANDARD and key != "event":
                # an extra named like a fixed field (the supervisor's `actor` = the child it speaks of) keeps
                # its value under a prefixed name instead of being lost
                name = key if key not in obj else f"extra_{key}"
                obj[name] = REDACTED if any(s in key.lower() for s in _SECRET_FIELDS) else value
        if obj.get("request_id") is None and tracing.request_id.get() is not None:
            obj["request_id"] = tracing.request_id.get()
            obj["trace_id"] = obj.get("trace_id") or tracing.trace_id.get()
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        line = orjson.dumps(obj, default=str).decode()
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        return line


def configure(name: str, kind: str, log_dir: Path | str | None, cfg: dict[str, Any], default_level: str = "INFO") -> None:
    """`setup` as the config's `logging` section says for this process (its level by name, else by kind, else
    the common one), with the configured keys as the secrets to redact."""
    logging_cfg = cfg.get("logging") or {}
    levels = logging_cfg.get("levels") or {}
    setup(name, log_dir, levels.get(name) or levels.get(kind) or logging_cfg.get("level") or default_level,
          stderr=bool(logging_cfg.get("stderr")),
          secrets=[v for v in (cfg.get("auth") or {}).values() if isinstance(v, str) and v])


def setup(actor: str, log_dir: Path | str | None, level: str = "INFO", max_bytes: int = 20 << 20, backups: int = 5,
          stderr: bool = False, secrets: list[str] | None = None) -> None:
    """Route the root logger to `<log_dir>/<actor>.jsonl`, and to stderr as JSON too when `stderr` is set or
    no dir is given."""
    # A handler that fails to write reports through handleError, which with this off stays silent instead
    # of printing a traceback to a stderr that may be the very thing that is broken.
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handlers: list[logging.Handler] = []
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            Path(log_dir) / f"{actor}.jsonl", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"))
    if stderr or not log_dir:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = JsonFormatter(actor, secrets)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    # Library chatter (aiohttp access lines, transformers warnings) stays, but at warning level and up.
    for noisy in ("aiohttp.access", "transformers", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
