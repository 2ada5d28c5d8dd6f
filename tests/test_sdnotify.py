"""sd_notify over a real unix datagram socket, the way systemd receives it."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from gptoss.supervisor.sdnotify import Notifier


@pytest.fixture
def env(monkeypatch):
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def short_dir():
    # pytest's tmp_path can be long; a unix socket path must fit in sun_path (~107 bytes).
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


def test_ready_over_a_filesystem_socket(env, short_dir):
    path = str(short_dir / "notify")
    listener = _listener(path)
    env.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    try:
        assert n.enabled
        assert n.notify(READY=1, STATUS="3/8 actors ready") is True
        assert listener.recv(4096) == b"READY=1\nSTATUS=3/8 actors ready"
        assert n.notify(WATCHDOG=1) is True
        assert listener.recv(4096) == b"WATCHDOG=1"
        assert n.notify(STOPPING=1, STATUS="stopping: signal SIGTERM") is True
        assert listener.recv(4096) == b"STOPPING=1\nSTATUS=stopping: signal SIGTERM"
    finally:
        n.close()
        listener.close()


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="abstract unix sockets are Linux only")
def test_ready_over_an_abstract_socket(env):
    name = f"gptoss-sdnotify-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    listener = _listener("\0" + name)
    env.setenv("NOTIFY_SOCKET", "@" + name)
    n = Notifier()
    try:
        assert n.enabled
        assert n.address == "\0" + name
        assert n.notify(READY=1, STATUS="serving") is True
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving"
    finally:
        n.close()
        listener.close()


def test_explicit_address_beats_the_environment(env, short_dir):
    path = str(short_dir / "explicit")
    listener = _listener(path)
    env.setenv("NOTIFY_SOCKET", str(short_dir / "elsewhere"))
    n = Notifier(path)
    try:
        assert n.notify(STATUS="x") is True
        assert listener.recv(4096) == b"STATUS=x"
    finally:
        n.close()
        listener.close()


def test_unset_notify_socket_is_a_no_op(env):
    n = Notifier()
    assert n.enabled is False
    assert n.notify(READY=1) is False
    assert n.notify(WATCHDOG=1) is False
    n.close()  # harmless


def test_empty_notify_socket_is_a_no_op(env):
    env.setenv("NOTIFY_SOCKET", "")
    n = Notifier()
    assert n.enabled is False and n.notify(READY=1) is False


def test_missing_socket_reports_false_without_raising(env, short_dir):
    env.setenv("NOTIFY_SOCKET", str(short_dir / "nobody-listens"))
    n = Notifier()
    try:
        assert n.enabled
        assert n.notify(READY=1) is False
    finally:
        n.close()


def test_close_disables(env, short_dir):
    path = str(short_dir / "n")
    listener = _listener(path)
    env.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    n.close()
    try:
        assert n.enabled is False
        assert n.notify(READY=1) is False
        listener.settimeout(0.05)
        with pytest.raises(socket.timeout):
            listener.recv(4096)
    finally:
        listener.close()


def test_watchdog_interval_is_half_of_watchdog_usec(env):
    n = Notifier()
    assert n.watchdog_interval() is None  # no watchdog configured
    env.setenv("WATCHDOG_USEC", "30000000")
    assert n.watchdog_interval() == 15.0
    env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert n.watchdog_interval() == 15.0


def test_watchdog_meant_for_another_process_is_ignored(env):
    env.setenv("WATCHDOG_USEC", "30000000")
    env.setenv("WATCHDOG_PID", str(os.getppid() if os.getppid() != os.getpid() else 1))
    assert Notifier().watchdog_interval() is None
