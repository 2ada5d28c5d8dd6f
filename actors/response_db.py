"""The durable /v1/responses store: one SQLite file in the state directory, owned by the cache actor.

A stored response must outlive the front (kill -9) and the whole server (a restart), so it lives in a file
under `$STATE_DIRECTORY` (systemd's StateDirectory=), else `store.dir` in the config. Only the cache actor
opens it: one writer, no cross-process locking to reason about.

Durability: WAL journal with `synchronous=NORMAL` by default. In WAL mode NORMAL never corrupts the file
and a committed row survives a crash of any process (the WAL is in the OS's page cache the moment the
commit returns); what a power cut or kernel crash can lose is the last transactions before the next
checkpoint's fsync. `store.synchronous: FULL` fsyncs every commit instead (one disk flush per stored
response) for those who want that too. WAL also lets a reader (a GET) run while a write is in progress.

Bounds: rows older than `ttl_s` are deleted, and past `max_bytes` of stored JSON the least recently
written rows go first. A row holds the response object (what GET returns) and the conversation as chat
messages (what a `previous_response_id` continues from), both as JSON, plus its status so that a
background response can be found and finished (or failed) by whoever owns it.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id       TEXT PRIMARY KEY,
    written  REAL NOT NULL,     -- unix time of the last write (age bound, eviction order)
    status   TEXT NOT NULL,     -- the response's own status: queued, in_progress, completed, failed, ...
    owner    INTEGER NOT NULL,  -- pid of the front generating it (0 once final): who may still finish it
    size     INTEGER NOT NULL,  -- bytes of the two JSON columns (the byte bound)
    response BLOB NOT NULL,
    messages BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_written ON responses (written);
"""
UNFINISHED = ("queued", "in_progress")


class ResponseDB:
    def __init__(self, path: Path, max_bytes: int, ttl_s: float, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"store.synchronous must be NORMAL or FULL, not {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.db = sqlite3.connect(path, isolation_level=None)  # autocommit; each statement is its transaction
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.db.executescript(SCHEMA)
        self.bytes = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def put(self, response: dict[str, Any], messages: list[Any], owner: int) -> int:
        """Insert or replace; returns how many rows the bounds evicted."""
        blob, msgs = orjson.dumps(response), orjson.dumps(messages)
        size = len(blob) + len(msgs)
        if size > self.max_bytes:
            raise ValueError(f"response of {size} bytes exceeds the store's {self.max_bytes}-byte bound")
        with self.db:  # one transaction: the byte count and the rows never disagree
            self.db.execute("BEGIN")
            old = self.db.execute("SELECT size FROM responses WHERE id = ?", (response["id"],)).fetchone()
            self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (response["id"], time.time(), response.get("status", "completed"),
                             0 if response.get("status") not in UNFINISHED else owner, size, blob, msgs))
            self.bytes += size - (old[0] if old else 0)
        return self.trim()

    def get(self, response_id: str) -> tuple[dict[str, Any], list[Any]] | None:
        row = self.db.execute("SELECT written, response, messages FROM responses WHERE id = ?",
                              (response_id,)).fetchone()
        if row is None or time.time() - row[0] > self.ttl_s:
            return None
        return orjson.loads(row[1]), orjson.loads(row[2])

    def delete(self, response_id: str) -> bool:
        with self.db:
            self.db.execute("BEGIN")
            row = self.db.execute("DELETE FROM responses WHERE id = ? RETURNING size", (response_id,)).fetchone()
            if row:
                self.bytes -= row[0]
        return row is not None

    def trim(self) -> int:
        """Apply the age bound, then the byte bound (oldest writes first)."""
        evicted = 0
        with self.db:
            self.db.execute("BEGIN")
            for (size,) in self.db.execute("DELETE FROM responses WHERE written < ? RETURNING size",
                                           (time.time() - self.ttl_s,)).fetchall():
                self.bytes -= size
                evicted += 1
            while self.bytes > self.max_bytes:
                row = self.db.execute("DELETE FROM responses WHERE id = (SELECT id FROM responses ORDER BY written "
                                      "LIMIT 1) RETURNING size").fetchone()
                if row is None:
                    break
                self.bytes -= row[0]
                evicted += 1
        return evicted

    def orphans(self, live_owner: int) -> list[str]:
        """Unfinished rows whose front is not `live_owner`: that front is gone, nobody will finish them."""
        return [r[0] for r in self.db.execute(
            f"SELECT id FROM responses WHERE status IN {UNFINISHED} AND owner != ?", (live_owner,))]
