"""Reasoning sealed for the client to carry: `include: ["reasoning.encrypted_content"]` with `store: false`.

A stateless client (the Agents SDK with store=false) keeps no response on the server, so the reasoning of a
tool-call turn travels with the client as an opaque token and comes back as input on the next turn. It is
sealed with AES-GCM (an AEAD from `cryptography`): the client can neither read nor alter it, and a token this
server did not seal is refused. The key is GPTOSS_REASONING_KEY (32 bytes, urlsafe base64) when set, so tokens
survive restarts and work across fronts sharing it; otherwise one random key per front process.
"""
from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_AAD = b"gptoss reasoning v1"  # binds a token to this use: nothing else sealed with the key opens as reasoning
_NONCE = 12


def _key() -> bytes:
    env = os.environ.get("GPTOSS_REASONING_KEY")
    if not env:
        return AESGCM.generate_key(bit_length=256)
    key = base64.urlsafe_b64decode(env)
    if len(key) != 32:
        raise ValueError("GPTOSS_REASONING_KEY must be 32 bytes in urlsafe base64")
    return key


_AEAD = AESGCM(_key())


def seal(text: str) -> str:
    nonce = os.urandom(_NONCE)
    return base64.urlsafe_b64encode(nonce + _AEAD.encrypt(nonce, text.encode(), _AAD)).decode()


def unseal(token: str) -> str | None:
    """The reasoning sealed in `token`, or None if this server did not seal it (or it was altered)."""
    try:
        raw = base64.urlsafe_b64decode(token)
        return _AEAD.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD).decode()
    except (ValueError, InvalidTag):
        return None
