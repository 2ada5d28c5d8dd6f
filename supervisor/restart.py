"""OTP restart policy: which exits restart a child, after how long, and when to give up on it.

- permanent: always restarted; transient: restarted only after an abnormal exit; temporary: never.
- Intensity: more than `max_restarts` restarts within `period_s` marks the child failed (OTP's
  MaxR/MaxT). The supervisor then stops the tree if the child is essential.
- Backoff: exponential in the number of recent restarts, so a crash loop does not spin the CPU and a
  single crash comes back almost at once.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

RESTART_TYPES = ("permanent", "transient", "temporary")


@dataclass
class RestartPolicy:
    restart: str = "permanent"
    max_restarts: int = 5
    period_s: float = 60.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    history: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.restart not in RESTART_TYPES:
            raise ValueError(f"restart type must be one of {RESTART_TYPES}, not {self.restart!r}")

    def wants_restart(self, exit_code: int | None) -> bool:
        if self.restart == "permanent":
            return True
        if self.restart == "transient":
            return exit_code != 0
        return False

    def record(self, now: float | None = None) -> float | None:
        """Count one restart; return the delay before it, or None if the intensity limit is exceeded."""
        now = time.monotonic() if now is None else now
        while self.history and now - self.history[0] > self.period_s:
            self.history.popleft()
        if len(self.history) >= self.max_restarts:
            return None
        self.history.append(now)
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** (len(self.history) - 1))
