"""Signed messages: which process may speak for which service on the broker.

Every service shares a key with the orchestrator, and nobody else holds it. The
orchestrator signs the commands it sends a service with that service's key; the service
signs its outcomes and heartbeats with it. So a command a service runs came from the
orchestrator, and an outcome the orchestrator applies came from the service that owns the
step (the receiver checks which key signed, not only that one did). Clients that submit
sagas over the broker sign with the key of identity ``client``.

A signature is an HMAC-SHA256 over the message's canonical bytes (its kind, its JSON body
with sorted keys, and the time it was signed), carried in the body's field ``sig``. A
message signed longer ago than the replay window is refused: the window bounds how long a
captured message can be played again, and within it a replay changes nothing (every step
is idempotent by its key, and an outcome already applied is refused as a duplicate). A
genuine message that waited in a queue for longer than the window is refused too, and the
orchestrator's sweeper treats it as lost: it sends the step again, freshly signed.

Rotation: an identity may have several keys. The first signs; any of them is accepted.
Add the new key second everywhere, then move it first, then drop the old one.

Signing is on by default: where no key is configured, a system on one machine signs with
keys its first process makes in the data directory, and a process that cannot share them
refuses to start (``saga_core.config.Settings.keyring``). Only ``SAGA_INSECURE=1`` turns
it off: nothing is signed and nothing is checked, and processes say so at every start.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import multiprocessing
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from saga_core.errors import SagaError
from saga_core.middleware import Middleware

log = logging.getLogger("saga.signing")

#: The identity whose key signs submissions sent over the broker.
CLIENT = "client"

#: The shortest key accepted, in characters: 256 bits as hex is 64, but a 32-character
#: passphrase from a password manager is within reach of nobody's brute force either.
MIN_KEY_LENGTH = 32

#: Why a message was refused: the label of the refusal counters, a closed set.
REASONS = ("unsigned", "bad_signature", "unknown_signer", "wrong_signer", "expired", "malformed")

#: The most signers one message may name (a worker serving every service signs its
#: heartbeats with each of their keys).
MAX_SIGNERS = 16


class Refused(SagaError):
    """A message whose signature does not hold: never acted on. ``reason`` is one of
    :data:`REASONS`; the message says what exactly."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Keyring:
    """The keys this process holds, by identity (a service's name, or ``client``)."""

    def __init__(
        self,
        keys: Mapping[str, tuple[str, ...]],
        window: float = 300.0,
        clock: Callable[[], float] = time.time,
    ):
        self._keys = {name: tuple(k.encode() for k in ks) for name, ks in keys.items() if ks}
        self.window, self.clock = window, clock

    @property
    def on(self) -> bool:
        return bool(self._keys)

    def holds(self, identity: str) -> bool:
        return identity in self._keys

    def sign(self, kind: str, body: dict[str, Any], signers: Collection[str]) -> dict[str, Any]:
        """``body`` with a signature by each of ``signers`` (unchanged where signing is off)."""
        if not self._keys:
            return body
        at = round(self.clock(), 3)
        data = _canonical(kind, at, body)
        by = {name: _mac(self._keys[name][0], data) for name in signers}
        return {**body, "sig": {"at": at, "by": by}}

    def check(self, kind: str, body: Any, any_age: bool = False) -> frozenset[str] | None:
        """The identities whose keys signed ``body`` as a message of ``kind``, or None where
        signing is off; raises :class:`Refused` when the signature does not hold (or is
        older than the replay window, unless ``any_age``: a message checked on receipt and
        still held)."""
        if not self._keys:
            return None
        sig = body.get("sig") if isinstance(body, Mapping) else None
        if sig is None:
            raise Refused("unsigned", f"{kind}: not signed")
        at, by = (sig.get("at"), sig.get("by")) if isinstance(sig, Mapping) else (None, None)
        if (
            isinstance(at, bool)
            or not isinstance(at, int | float)
            or not isinstance(by, Mapping)
            or not 0 < len(by) <= MAX_SIGNERS
            or not all(isinstance(n, str) and isinstance(m, str) for n, m in by.items())
        ):
            raise Refused("malformed", f"{kind}: sig must be {{at: a time, by: {{name: mac}}}}")
        age = self.clock() - at
        if not any_age and not -self.window <= age <= self.window:
            raise Refused(
                "expired",
                f"{kind}: signed {age:.0f}s {'ago' if age > 0 else 'ahead'}, "
                f"outside the replay window of {self.window:g}s",
            )
        try:
            data = _canonical(kind, at, {k: v for k, v in body.items() if k != "sig"})
        except (TypeError, ValueError) as exc:
            raise Refused("malformed", f"{kind}: no canonical form ({exc})") from None
        for name, mac in by.items():
            keys = self._keys.get(name)
            if keys is None:
                raise Refused("unknown_signer", f"{kind}: signed as {name[:40]!r}, a key not held")
            # every key is tried, so the time taken does not tell which one came close
            if not sum(hmac.compare_digest(_mac(key, data), mac) for key in keys):
                raise Refused("bad_signature", f"{kind}: the signature of {name[:40]!r} is wrong")
        return frozenset(by)


def new_keys(identities: Collection[str]) -> dict[str, tuple[str, ...]]:
    """A fresh key for each of ``identities``: 256 random bits each, as hex."""
    return {name: (secrets.token_hex(32),) for name in identities}


def announce(keyring: Keyring, process: str) -> None:
    """Say at start whether this process signs and checks messages."""
    if keyring.on:
        log.info("%s: messages signed and checked (replay window %gs)", process, keyring.window)
    else:
        log.warning(
            "%s: message signing is OFF (SAGA_INSECURE=1): anyone who can reach the broker "
            "can forge commands and outcomes. Unset it, and set SAGA_KEYS_FILE where the "
            "processes do not share a data directory (see docs/security.md)",
            process,
        )


def require(signers: frozenset[str] | None, identity: str, kind: str) -> None:
    """Refuse a message that ``identity`` should have signed and did not (None: off)."""
    if signers is not None and identity not in signers:
        raise Refused(
            "wrong_signer", f"{kind}: signed by {', '.join(sorted(signers))}, not by {identity}"
        )


def _canonical(kind: str, at: float, body: Mapping[str, Any]) -> bytes:
    return json.dumps(
        [kind, at, body], sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def _mac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


class RefusalCount(Middleware):
    """Refusals by reason, in memory shared with the worker's pool processes (created before
    they fork), so that the heartbeat thread of the main process can report them all."""

    def __init__(self) -> None:
        self._counts = multiprocessing.Array("q", len(REASONS))

    def refused(self, kind: str, reason: str) -> None:
        with self._counts.get_lock():
            self._counts[REASONS.index(reason)] += 1

    def snapshot(self) -> dict[str, int]:
        with self._counts.get_lock():
            return {r: self._counts[i] for i, r in enumerate(REASONS) if self._counts[i]}
