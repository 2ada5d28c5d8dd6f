"""`gptoss-ctl`: send one control command to the running supervisor over its ZeroMQ socket and print the
JSON answer. The socket lives in the 0700 run directory, so being able to reach it is the authorization.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

import zmq

from ..ipc import endpoints, messages

# these wait for a rank to load its model again (reload-config: each rank in turn, and back on a rollback)
TIMEOUT_S = {"reload": 1900.0, "restart": 1900.0, "reload-config": 7200.0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gptoss-ctl", description="control a running gptoss-serve")
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer")
    sub = p.add_subparsers(dest="op", required=True)
    sub.add_parser("status")
    sub.add_parser("bundle")
    for op in ("drain", "undrain", "reload"):
        sub.add_parser(op).add_argument("name", help="rank number or name (0 or rank-0)")
    sub.add_parser("restart").add_argument("name", help="actor name (front, router, rank-0, ...)")
    sub.add_parser("reload-config", help="re-read the config file and roll the ranks onto it (as SIGHUP does); "
                                         "prints each step; exit 1 when refused or rolled back")
    args = p.parse_args(argv)
    run_dir = args.run_dir or endpoints.default_run_dir()
    if not endpoints.path(run_dir, "sup").exists():
        print(f"gptoss-ctl: no supervisor socket in {run_dir} (is gptoss-serve running? --run-dir?)", file=sys.stderr)
        sys.exit(2)
    body = {"name": args.name} if hasattr(args, "name") else {}
    timeout = args.timeout or TIMEOUT_S.get(args.op, 30.0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"ctl-{uuid.uuid4().hex[:8]}".encode())
    sock.connect(endpoints.endpoint(run_dir, "sup"))
    req = messages.make("ctl", "gptoss-ctl", op=args.op.replace("-", "_"), args=body)
    sock.send(messages.encode(req))
    try:
        while True:
            if not sock.poll(timeout * 1000):
                print(f"gptoss-ctl: no answer within {timeout}s", file=sys.stderr)
                sys.exit(3)
            rep = messages.decode(sock.recv())
            if rep.id == req.id:
                break
    finally:
        ctx.destroy(linger=0)
    ok = rep.body["ok"] and rep.body["result"].get("ok", True)
    print(json.dumps(rep.body["result"] if rep.body["ok"] else {"error": rep.body["error"]}, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
