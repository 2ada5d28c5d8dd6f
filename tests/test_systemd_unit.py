"""The systemd unit's contract (DESIGN.md, Files): notify + watchdog, reload by SIGHUP, ordered drain on stop,
restart on failure, and hardening that still lets CUDA reach the GPUs. Checked against the supervisor's own
config and socket names so the two cannot drift apart; `systemd-analyze verify` runs where it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gptoss.ipc import endpoints
from gptoss.supervisor import config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "gptoss.service"
ENV_EXAMPLE = ROOT / "systemd" / "gptoss.env.example"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd's syntax, enough for this file: sections, repeated keys kept in order, comments, continuations."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def values(unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times: {found}"
    return found[0]


_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
               "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}


def seconds(span: str) -> float:
    """A systemd time span ("60", "90s", "1min 30s", "35min") in seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", span):
        return float(span)
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", span)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == span.replace(" ", ""), f"bad time span {span!r}"
    for number, unit_name in parts:
        total += float(number) * _SPAN_UNITS[unit_name]
    return total


def truthy(value: str) -> bool:
    return value.lower() in ("1", "yes", "true", "on")


def test_time_span_parser():
    assert seconds("60") == 60 and seconds("90s") == 90 and seconds("1min 30s") == 90 and seconds("35min") == 2100


# ---- the outside contract ---------------------------------------------------------------------------------

def test_notify_with_watchdog(unit):
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert 0 < seconds(one(unit, "Service", "WatchdogSec")) <= 120


def test_exec_start_runs_the_tree_with_systemd_paths(unit):
    argv = one(unit, "Service", "ExecStart").split()
    assert argv[0] == "/opt/gptoss/venv/bin/gptoss-serve"
    flags = dict(zip(argv[1::2], argv[2::2]))
    assert flags == {"--config": "/etc/gptoss/server_config.yaml", "--log-dir": "/var/log/gptoss",
                     "--run-dir": "/run/gptoss"}
    # The flags point at the directories systemd creates for the service user.
    assert flags["--run-dir"] == "/run/" + one(unit, "Service", "RuntimeDirectory")
    assert flags["--log-dir"] == "/var/log/" + one(unit, "Service", "LogsDirectory")


def test_run_dir_is_private_and_short_enough_for_unix_sockets(unit):
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0700"
    run_dir = "/run/" + one(unit, "Service", "RuntimeDirectory")
    longest = max(len(f"{run_dir}/{name}") for name in endpoints.SOCKETS.values())
    assert longest <= endpoints.SUN_PATH_MAX


def test_reload_is_sighup_to_the_supervisor(unit):
    reload = one(unit, "Service", "ExecReload")
    assert re.fullmatch(r"/(usr/)?bin/kill -(HUP|SIGHUP|s HUP) \$MAINPID", reload), reload


def test_stop_drains_before_the_kill(unit):
    assert one(unit, "Service", "KillMode") == "mixed"
    sup = config.defaults()["supervisor"]
    stop = seconds(one(unit, "Service", "TimeoutStopSec"))
    assert stop > 30
    assert stop > float(sup["drain_timeout_s"]) + 5  # the supervisor's own per-child grace fits inside


def test_start_timeout_covers_a_big_model_load(unit):
    sup = config.defaults()["supervisor"]
    assert seconds(one(unit, "Service", "TimeoutStartSec")) > float(sup["rank_start_timeout_s"])


def test_restart_policy(unit):
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) >= 1
    assert values(unit, "Unit", "StartLimitBurst"), "an endless crash loop should end in a failed unit"


def test_user_and_directories(unit):
    assert one(unit, "Service", "User") == "gptoss"
    cache = "/var/cache/" + one(unit, "Service", "CacheDirectory")
    env = dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))
    assert env["HF_HOME"].startswith(cache + "/")
    assert one(unit, "Service", "EnvironmentFile") == "-/etc/gptoss/gptoss.env"
    # the response store's home: systemd sets $STATE_DIRECTORY, private to the service user
    assert one(unit, "Service", "StateDirectory") == "gptoss" and one(unit, "Service", "StateDirectoryMode") == "0700"


# ---- hardening, keeping the GPUs ---------------------------------------------------------------------------

def test_hardening(unit):
    svc = "Service"
    assert truthy(one(unit, svc, "NoNewPrivileges"))
    assert one(unit, svc, "ProtectSystem") == "strict"
    assert one(unit, svc, "ProtectHome") == "read-only"
    assert truthy(one(unit, svc, "PrivateTmp"))
    assert truthy(one(unit, svc, "ProtectKernelTunables"))
    assert truthy(one(unit, svc, "ProtectKernelModules"))
    families = one(unit, svc, "RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= set(families)  # AF_UNIX: ipc:// and sd_notify
    assert not any(f.startswith("~") for f in families)


def test_gpus_stay_reachable(unit):
    for value in values(unit, "Service", "PrivateDevices"):
        assert not truthy(value), "PrivateDevices=yes hides /dev/nvidia*"
    for value in values(unit, "Service", "MemoryDenyWriteExecute"):
        assert not truthy(value), "JIT compilers (Triton, CUDA) need W+X memory"
    assert not values(unit, "Service", "ProcSubset"), "ProcSubset=pid hides /proc/driver/nvidia"


def test_device_policy_allows_the_nvidia_nodes(unit):
    assert one(unit, "Service", "DevicePolicy") in ("closed", "strict")
    allows = [v.split() for v in values(unit, "Service", "DeviceAllow")]
    specs = {}
    for parts in allows:
        assert 1 <= len(parts) <= 2, parts
        spec, access = parts[0], (parts[1] if len(parts) == 2 else "rwm")
        assert re.fullmatch(r"[rwm]+", access), parts
        if spec.startswith("/dev/"):
            # an exact node: systemd does no globbing on paths
            assert not set(spec) & set("*?["), f"{spec}: globs are not supported in a DeviceAllow path"
        else:
            assert spec.startswith(("char-", "block-")), spec
            group = spec.split("-", 1)[1]
            assert not group.isdigit(), f"{spec}: groups are /proc/devices names, not major numbers"
        specs[spec] = access
    # Major 195 (nvidia0..N, nvidiactl) under either of its /proc/devices names, and unified memory.
    assert "rw" in specs.get("char-nvidia-frontend", "") and "rw" in specs.get("char-nvidia", "")
    assert "rw" in specs.get("char-nvidia-uvm", "")
    for node in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"):
        assert "rw" in specs.get(node, ""), node


def test_install_section(unit):
    assert "multi-user.target" in one(unit, "Install", "WantedBy")


def test_parser_rejects_what_systemd_would_not_parse():
    with pytest.raises(AssertionError):
        parse_unit("Type=notify\n")  # key outside a section
    parsed = parse_unit("[Service]\n# c\nExecStart=/bin/a \\\n  --flag x\nDeviceAllow=a\nDeviceAllow=b\n")
    assert parsed == {"Service": [("ExecStart", "/bin/a  --flag x"), ("DeviceAllow", "a"), ("DeviceAllow", "b")]}


# ---- systemd's own parser -----------------------------------------------------------------------------------

def _verify(unit_text: str, where: Path) -> list[str]:
    where.mkdir()
    path = where / "gptoss.service"
    path.write_text(unit_text)
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=30)
    lines = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0 and not any("gptoss.service" in line for line in lines):
        pytest.skip(f"systemd-analyze verify cannot run here: {lines[-3:]}")
    return [line for line in lines if "gptoss.service" in line]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    # The ExecStart binary exists only on an installed box; point a copy at one that exists everywhere.
    text = UNIT.read_text().replace("/opt/gptoss/venv/bin/gptoss-serve", shutil.which("true"))
    # First prove the checker reports problems here at all, so a silent run below means something.
    broken = text.replace("[Service]\n", "[Service]\nNoSuchKey=1\nDeviceAllow=/sys/nvidia rw\n", 1)
    complaints = _verify(broken, tmp_path / "broken")
    if not complaints:
        pytest.skip("systemd-analyze verify reported nothing for a broken unit; it cannot judge this one")
    assert any("NoSuchKey" in c for c in complaints)
    assert _verify(text, tmp_path / "real") == []


# ---- the example environment file ---------------------------------------------------------------------------

def test_env_example_documents_the_variables():
    text = ENV_EXAMPLE.read_text()
    assigned = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            m = re.fullmatch(r"#\s?([A-Z][A-Z0-9_]*)=(.*)", stripped)  # a commented-out setting
            if m:
                assigned.setdefault(m.group(1), m.group(2))
            continue
        # systemd's EnvironmentFile syntax: KEY=value, no `export`
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", stripped)
        assert m, f"not an EnvironmentFile assignment: {line!r}"
        assigned[m.group(1)] = m.group(2)
    for var in ("GPTOSS_API_KEY", "GPTOSS_ADMIN_KEY", "HF_HOME", "CUDA_VISIBLE_DEVICES",
                "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"):
        assert var in assigned, f"{var} is not documented in {ENV_EXAMPLE.name}"
    assert "0600" in text  # it holds secrets
