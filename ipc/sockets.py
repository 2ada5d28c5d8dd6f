"""Socket helpers on zmq.asyncio: every socket gets LINGER 0 and bounded queues, and every frame goes
through the one codec in ipc.messages.

LINGER defaults to "forever" in ZeroMQ, which turns a close with unsent messages into a hung shutdown; we
never want a message more than we want to exit. High-water marks bound the memory a dead peer's queue may
hold.

Every socket counts the messages it sent, received and dropped (a send refused because the peer's queue was
full or the peer unroutable, a frame that failed to decode), per endpoint name: the base actor reports them
as `ipc_messages_*_total{socket=...}`. A plain dict add per message, nothing more, on the hot path.
"""
from __future__ import annotations

import asyncio
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from . import endpoints
from .messages import MAX_FRAME_BYTES, Message, MessageError, decode, encode

log = logging.getLogger(__name__)
HWM = 10_000
# endpoint name -> [sent, received, dropped], for this process's sockets (a name shared by two of its
# sockets, e.g. a DEALER per peer on one endpoint, adds up).
STATS: dict[str, list[int]] = {}


def socket(ctx: zmq.asyncio.Context, kind: int, identity: str | None = None) -> zmq.asyncio.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    # ZeroMQ drops a peer that sends a larger message before it reaches us: oversized frames cost nothing.
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    if kind == zmq.ROUTER:
        # Sending to a peer that is gone raises instead of vanishing silently, so we can fail the request.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # No ROUTER_HANDOVER: with it, any peer that connects under a live actor's identity takes the route and
        # the real actor's connection is left dead for good (ZeroMQ never reconnects it). Without it, a second
        # peer under a taken identity is ignored. A restarted actor needs no hand-over: its predecessor's ipc
        # connection closed when that process exited, before the supervisor started the new one.
    return sock


def bind(sock: zmq.asyncio.Socket, run_dir: Path | str, name: str) -> None:
    """Bind an ipc endpoint, removing a stale socket file first.

    A second bind on the same path silently steals it from a live binder, so callers must only get here
    once the previous owner is dead (the supervisor waits for a child's exit before restarting it).
    """
    p = endpoints.path(run_dir, name)
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    sock.bind(endpoints.endpoint(run_dir, name))
    _name(sock, name)


def connect(sock: zmq.asyncio.Socket, run_dir: Path | str, name: str) -> None:
    sock.connect(endpoints.endpoint(run_dir, name))
    _name(sock, name)


def _name(sock: zmq.asyncio.Socket, name: str) -> None:
    # pyzmq turns attribute assignment into setsockopt; the instance dict takes a plain attribute
    vars(sock)["stats"] = STATS.setdefault(name, [0, 0, 0])


def _stats(sock: zmq.asyncio.Socket) -> list[int]:
    # A socket that was never bound or connected through us (a test's raw socket) counts into a throwaway.
    return getattr(sock, "stats", None) or [0, 0, 0]


async def send(sock: zmq.asyncio.Socket, msg: Message, to: bytes | None = None) -> None:
    frame = encode(msg)
    if to is None:
        await sock.send(frame)
    else:
        await sock.send_multipart([to, frame])
    _stats(sock)[0] += 1


def send_nowait(sock: zmq.asyncio.Socket, msg: Message, to: bytes | None = None) -> bool:
    """Send without blocking; False when the peer's queue is full or the peer is unroutable."""
    frame = encode(msg)
    try:
        if to is None:
            sent = sock.send(frame, flags=zmq.NOBLOCK)
        else:
            sent = sock.send_multipart([to, frame], flags=zmq.NOBLOCK)
        # A zmq.asyncio socket does not raise here: it returns a Future holding the error (EAGAIN at the
        # high-water mark, EHOSTUNREACH for a ROUTER_MANDATORY peer that is gone). Reading it is what makes
        # this return False, and what keeps asyncio from logging "Future exception was never retrieved".
        ok = _outcome(sent)
    except (zmq.Again, zmq.ZMQError):
        ok = False
    _stats(sock)[0 if ok else 2] += 1
    return ok


def _outcome(sent: object) -> bool:
    if not isinstance(sent, asyncio.Future):
        return True
    if not sent.done():  # queued for the I/O loop: its error, if any, is read (not logged) when it comes
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())
        return True
    return sent.exception() is None


def parse(frames: list[bytes], routed: bool, where: str) -> tuple[bytes | None, Message] | None:
    """Decode a received multipart message; log and return None for anything malformed."""
    try:
        if routed:
            if len(frames) != 2:
                raise MessageError(f"expected [identity, frame], got {len(frames)} parts")
            return frames[0], decode(frames[1])
        if len(frames) != 1:
            raise MessageError(f"expected one frame, got {len(frames)} parts")
        return None, decode(frames[0])
    except MessageError as exc:
        log.warning("dropped malformed message", extra={"event": "bad_frame", "where": where, "error": str(exc)})
        return None


async def recv(sock: zmq.asyncio.Socket, routed: bool, where: str) -> tuple[bytes | None, Message] | None:
    frames = await sock.recv_multipart()
    got = parse(frames, routed, where)
    _stats(sock)[1 if got is not None else 2] += 1
    return got


class Requester:
    """Request/reply to one actor over our DEALER: the reply carries the request's message id, and every wait
    is bounded, so a peer that is down or slow costs a None, never a hang. The actor's receive loop on the
    socket hands replies to `reply`."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock
        self.waits: dict[str, asyncio.Future] = {}

    async def ask(self, msg: Message, timeout: float) -> dict[str, Any] | None:
        fut = asyncio.get_running_loop().create_future()
        self.waits[msg.id] = fut
        try:
            if not send_nowait(self.sock, msg):
                return None
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            self.waits.pop(msg.id, None)

    def reply(self, msg: Message) -> None:
        fut = self.waits.get(msg.id)
        if fut is not None and not fut.done():
            fut.set_result(msg.body)
