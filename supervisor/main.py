"""`gptoss-serve`: run the whole tree in the foreground, systemd style (Type=notify).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when an essential actor failed (so systemd's
Restart=on-failure restarts the service), 2 for a bad configuration or a missing model (no restart loop
can fix those; the message says what to do).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..ipc import endpoints, jsonlog
from . import config as config_mod
from . import gpus
from .arbiter import Arbiter
from .specs import child_specs

log = logging.getLogger("supervisor")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gptoss-serve", description="OpenAI-compatible GPT-OSS server")
    p.add_argument("--config", type=Path, help="YAML config file (defaults: configs/server_config.yaml)")
    p.add_argument("--model", help="tiny | 20b | 120b | a checkpoint directory | a cached Hugging Face id")
    p.add_argument("--profile", choices=["latency_first", "balanced", "quality_first"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--auto-port", action="store_true", default=None, help="pick a free port (see <run-dir>/http.json)")
    p.add_argument("--gpu-mode", choices=["single", "pipeline", "tensor", "auto"],
                   help="single: a replica per GPU; pipeline: one replica over several GPUs; auto: by model size "
                        "and free memory (tensor is not available yet)")
    p.add_argument("--ranks", type=int, help="rank processes (single: replicas; pipeline: GPU groups)")
    p.add_argument("--api-key", help="guards /v1/* (prefer GPTOSS_API_KEY: flags show in ps)")
    p.add_argument("--admin-key", help="guards /admin/* (prefer GPTOSS_ADMIN_KEY)")
    p.add_argument("--log-dir", type=Path)
    p.add_argument("--run-dir", type=Path)
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Flags the operator gave, as a nested dict shaped like the config file."""
    where = {
        "model": ("model",), "profile": ("profile",), "host": ("http", "host"), "port": ("http", "port"),
        "auto_port": ("http", "auto_port"), "gpu_mode": ("gpu", "mode"), "ranks": ("gpu", "ranks"),
        "api_key": ("auth", "api_key"), "admin_key": ("auth", "admin_key"),
        "log_dir": ("paths", "log_dir"), "run_dir": ("paths", "run_dir"),
    }
    out: dict[str, Any] = {}
    for attr, keys in where.items():
        value = getattr(args, attr)
        if value is None:
            continue
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = str(value) if isinstance(value, Path) else value
    return out


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = overrides_from(args)
    try:
        cfg = config_mod.load(args.config, overrides)
        run_dir = endpoints.prepare_run_dir(Path(cfg["paths"]["run_dir"] or endpoints.default_run_dir()))
        log_dir = Path(cfg["paths"]["log_dir"]).absolute()
        jsonlog.configure("supervisor", "supervisor", log_dir, cfg)
        if cfg["http"]["auto_port"]:
            cfg["http"]["port"] = free_port(cfg["http"]["host"])
        from ..models.loader import resolve_model  # imports torch: only once the config is known good

        cfg["model_path"] = str(resolve_model(cfg["model"]))
        cfg["gpu"].update(gpus.plan(cfg, Path(cfg["model_path"])))  # resolves auto; a model that cannot fit stops here
        specs = child_specs(cfg)
    except Exception as exc:
        print(f"gptoss-serve: {exc}", file=sys.stderr)
        sys.exit(2)
    log.info("starting", extra={"event": "start", "model": cfg["model"], "model_path": cfg["model_path"],
                                "run_dir": str(run_dir), "log_dir": str(log_dir), "pid": os.getpid()})
    print(f"gptoss-serve: serving {cfg['model']} on http://{cfg['http']['host']}:{cfg['http']['port']} "
          f"(logs: {log_dir}, run dir: {run_dir})", file=sys.stderr)
    arbiter = Arbiter(cfg, specs, run_dir, log_dir, config_path=args.config, overrides=overrides)
    sys.exit(asyncio.run(arbiter.run()))


if __name__ == "__main__":
    main()
