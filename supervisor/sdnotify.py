"""sd_notify over `$NOTIFY_SOCKET`, without libsystemd: one datagram per state change.

systemd passes either a filesystem path or an abstract socket name starting with '@' (the leading '@'
stands for a NUL byte). When the variable is unset we are not under systemd and every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("sdnotify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send e.g. notify(READY=1, STATUS="serving"); False if not under systemd or the send failed."""
        if self.sock is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self.sock.sendto(payload, self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify failed", extra={"event": "sd_notify_failed", "error": str(exc)})
            return False

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec (systemd's advice), when the watchdog is on and meant for this process."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
            pid = int(os.environ.get("WATCHDOG_PID") or os.getpid())
        except ValueError:
            return None
        if usec <= 0 or pid != os.getpid():
            return None
        return usec / 2_000_000

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
