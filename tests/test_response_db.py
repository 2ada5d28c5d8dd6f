"""The SQLite response store on its own: bounds, age, reopening, orphaned background responses."""
from __future__ import annotations

import sqlite3
import time

import pytest

from gptoss.actors.cache import state_dir
from gptoss.actors.response_db import ResponseDB


def resp(i: int, status: str = "completed", pad: int = 0) -> dict:
    return {"id": f"resp_{i}", "status": status, "pad": "x" * pad}


def test_put_get_delete_and_survive_a_reopen(tmp_path):
    db = ResponseDB(tmp_path / "s" / "r.sqlite3", 1 << 20, 3600)
    db.put(resp(1), [{"role": "user", "content": "hi"}], owner=7)
    db.close()
    db = ResponseDB(tmp_path / "s" / "r.sqlite3", 1 << 20, 3600)  # a new process opening the same file
    got = db.get("resp_1")
    assert got == (resp(1), [{"role": "user", "content": "hi"}])
    assert db.delete("resp_1") and not db.delete("resp_1") and db.get("resp_1") is None
    assert db.bytes == 0
    mode = sqlite3.connect(tmp_path / "s" / "r.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_byte_bound_evicts_oldest_writes_first(tmp_path):
    db = ResponseDB(tmp_path / "r.sqlite3", 3000, 3600)
    for i in range(5):
        db.put(resp(i, pad=900), [], owner=1)
    assert db.bytes <= 3000 and len(db) == 3
    assert db.get("resp_0") is None and db.get("resp_1") is None and db.get("resp_4") is not None
    with pytest.raises(ValueError, match="exceeds"):
        db.put(resp(9, pad=5000), [], owner=1)
    reopened = ResponseDB(tmp_path / "r.sqlite3", 3000, 3600)
    assert reopened.bytes == db.bytes  # the byte count is rebuilt from the file


def test_age_bound(tmp_path):
    db = ResponseDB(tmp_path / "r.sqlite3", 1 << 20, 0.2)
    db.put(resp(1), [], owner=1)
    time.sleep(0.3)
    assert db.get("resp_1") is None  # expired rows are never served ...
    db.put(resp(2), [], owner=1)  # ... and are deleted by the next write's trim
    assert len(db) == 1


def test_orphans_are_unfinished_rows_of_another_front(tmp_path):
    db = ResponseDB(tmp_path / "r.sqlite3", 1 << 20, 3600)
    db.put(resp(1, "in_progress"), [], owner=100)
    db.put(resp(2, "queued"), [], owner=200)
    db.put(resp(3, "completed"), [], owner=100)
    assert db.orphans(200) == ["resp_1"]
    assert sorted(db.orphans(300)) == ["resp_1", "resp_2"]


def test_synchronous_choice_is_checked(tmp_path):
    ResponseDB(tmp_path / "a.sqlite3", 1 << 20, 3600, "full")
    with pytest.raises(ValueError, match="NORMAL or FULL"):
        ResponseDB(tmp_path / "b.sqlite3", 1 << 20, 3600, "OFF")


def test_state_dir_is_systemds_then_the_config(monkeypatch, tmp_path):
    cfg = {"paths": {"state_dir": str(tmp_path / "cfg")}}
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert state_dir(cfg) == tmp_path / "cfg"
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/sd:{tmp_path}/other")
    assert state_dir(cfg) == tmp_path / "sd"
