"""Where every socket of the tree lives: `ipc://` paths inside one private run directory.

The run directory is created with mode 0700 so only the service user can connect to any actor. Paths stay
short on purpose: a unix socket path is limited to ~107 bytes (sun_path), so we fail loudly at start-up
rather than let ZeroMQ truncate an endpoint.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

SUN_PATH_MAX = 107

# name -> socket file. Who binds each one is fixed: the supervisor binds sup/pub, the router router/ranks,
# the front tokens, telemetry telemetry, memory guard memory/sessions, cache cache.
SOCKETS = {
    "sup": "sup.sock",  # supervisor ROUTER <- actor DEALERs and gptoss-ctl: heartbeats, state, control
    "pub": "pub.sock",  # supervisor PUB -> everyone: tree state
    "router": "router.sock",  # router ROUTER <- front DEALER: generate/abort
    "ranks": "ranks.sock",  # router ROUTER <- rank DEALERs
    "tokens": "tokens.sock",  # front PULL <- rank PUSHes: token deltas
    "telemetry": "telemetry.sock",  # telemetry PULL <- every actor
    "telemetry_q": "telemetry-q.sock",  # telemetry ROUTER <- front DEALER: /metrics and /stats scrapes
    "memory": "memory.sock",  # memory guard PUB -> router, front, ranks: pressure
    "sessions": "sessions.sock",  # memory guard PULL <- front PUSH: session use
    "cache": "cache.sock",  # cache ROUTER <- front DEALER
}


def default_run_dir() -> Path:
    base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"gptoss-{os.getuid()}"


def prepare_run_dir(run_dir: Path) -> Path:
    """Create the run directory private to this user, or refuse one that others can open."""
    run_dir = Path(run_dir).absolute()
    longest = max(len(os.fsencode(run_dir / f)) for f in SOCKETS.values())
    if longest > SUN_PATH_MAX:
        raise ValueError(f"run dir {run_dir} too long for unix sockets ({longest} > {SUN_PATH_MAX} bytes)")
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = run_dir.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"run dir {run_dir} belongs to uid {st.st_uid}, not {os.getuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(run_dir, 0o700)
    return run_dir


def path(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / SOCKETS[name]


def endpoint(run_dir: Path | str, name: str) -> str:
    return f"ipc://{path(run_dir, name)}"
