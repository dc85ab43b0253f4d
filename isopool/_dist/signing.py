"""Sign and verify payloads: HMAC-SHA256 envelopes with key ids, checked before unpickling.

Anything that crosses Redis is a pickle, and unpickling runs code; so every job and
every result is wrapped in an envelope whose MAC covers its bytes *and* its context
(queue name, job id, what it is), and nothing is unpickled until the MAC has been
checked with a constant-time compare. A job copied into another queue, or a result
copied onto another job, fails the check. Key ids allow rotation: sign with the
current key, verify with any key still known.

Envelope::

    b"ISG1" | key id length (1 byte) | key id | MAC (32 bytes) | body
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .._errors import SignatureError

__all__ = ["Keyring"]

_MAGIC: Final = b"ISG1"
_MAC_SIZE: Final = 32
_MIN_SECRET: Final = 16  # bytes; shorter secrets are guessable
ENV_SECRET: Final = "ISOPOOL_SECRET"
ENV_SECRET_FILE: Final = "ISOPOOL_SECRET_FILE"
DEFAULT_KEY_ID: Final = "default"


def _as_bytes(name: str, secret: str | bytes) -> bytes:
    data = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(data) < _MIN_SECRET:
        raise ValueError(f"{name} must be at least {_MIN_SECRET} bytes long")
    return data


class Keyring:
    """The keys a queue signs and verifies with.

    Args:
        keys: Key id -> secret. Every key verifies; ``current`` signs.
        current: The key id used to sign (default: the only key).

    Raises:
        ValueError: no key, a secret shorter than 16 bytes, or an unknown ``current``.
    """

    def __init__(self, keys: Mapping[str, str | bytes], current: str | None = None) -> None:
        if not keys:
            raise ValueError("a Keyring needs at least one key")
        self._keys = {kid: _as_bytes(f"secret {kid!r}", s) for kid, s in keys.items()}
        for kid in self._keys:
            if not 0 < len(kid.encode()) < 256:
                raise ValueError(f"key id must be 1 to 255 bytes, got {kid!r}")
        if current is None:
            if len(self._keys) != 1:
                raise ValueError("several keys: say which one signs with key_id=")
            current = next(iter(self._keys))
        if current not in self._keys:
            raise ValueError(f"key_id {current!r} is not among the keys {sorted(self._keys)}")
        self.current = current

    def __repr__(self) -> str:  # never show secrets
        return f"<isopool Keyring current={self.current!r} keys={sorted(self._keys)}>"

    @classmethod
    def load(
        cls,
        secret: str | bytes | Mapping[str, str | bytes] | None = None,
        *,
        key_id: str | None = None,
        secret_file: str | os.PathLike[str] | None = None,
    ) -> Keyring:
        """Find the secret: the argument, else ``secret_file``, else the environment.

        The environment is ``ISOPOOL_SECRET`` (the secret) or ``ISOPOOL_SECRET_FILE``
        (a file holding it). No secret, no start.

        Raises:
            ValueError: no secret anywhere, or a bad one; the message says where to
                put one.
        """
        if secret is None and secret_file is None:
            secret = os.environ.get(ENV_SECRET)
            secret_file = os.environ.get(ENV_SECRET_FILE)
        if secret is None and secret_file is not None:
            try:
                secret = Path(secret_file).read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"cannot read secret_file {str(secret_file)!r}: {exc}") from exc
        if secret is None:
            raise ValueError(
                "the queue refuses to run without a secret: pass secret=..., secret_file=..., "
                f"or set {ENV_SECRET} or {ENV_SECRET_FILE} (the same secret on every machine)"
            )
        if isinstance(secret, Mapping):
            return cls(secret, key_id)
        return cls({key_id or DEFAULT_KEY_ID: secret})

    def holds(self, key_id: str) -> bool:
        """Whether this keyring has a secret for ``key_id`` (it can verify with it)."""
        return key_id in self._keys

    def proofs(self, scope: str) -> dict[str, str]:
        """Key id -> a check value of its secret for ``scope`` (a queue's name).

        An HMAC of a fixed message, in a domain of its own (it can never pass as a
        payload's MAC): stored with a queue by the first user of each key id, it lets
        a later one tell "my secret for this key id is not the queue's" at start,
        instead of refusing every job it fetches as forged.
        """
        message = b"isopool/keycheck/1\0" + scope.encode()
        return {
            kid: hmac.new(key, message, hashlib.sha256).hexdigest()
            for kid, key in self._keys.items()
        }

    @staticmethod
    def key_id_of(envelope: bytes) -> str | None:
        """The key id an envelope claims to be signed with (unverified), or None."""
        if not envelope.startswith(_MAGIC) or len(envelope) < len(_MAGIC) + 1:
            return None
        start = len(_MAGIC) + 1
        kid = envelope[start : start + envelope[len(_MAGIC)]]
        return kid.decode(errors="replace") if kid else None

    def sign(self, body: bytes, context: bytes) -> bytes:
        """Return the envelope of ``body`` for ``context`` (queue, id, kind)."""
        kid = self.current.encode()
        mac = self._mac(self._keys[self.current], body, context)
        return b"".join((_MAGIC, bytes([len(kid)]), kid, mac, body))

    def verify(self, envelope: bytes, context: bytes) -> bytes:
        """Return the body of ``envelope`` if its MAC is right for ``context``.

        Raises:
            SignatureError: unsigned, malformed, an unknown key id, or a wrong MAC
                (tampered, forged, or made for another queue or job).
        """
        if not envelope.startswith(_MAGIC) or len(envelope) < len(_MAGIC) + 1:
            raise SignatureError("payload is not signed (no isopool envelope)")
        kid_len = envelope[len(_MAGIC)]
        start = len(_MAGIC) + 1
        kid = envelope[start : start + kid_len]
        mac = envelope[start + kid_len : start + kid_len + _MAC_SIZE]
        body = envelope[start + kid_len + _MAC_SIZE :]
        if len(kid) != kid_len or len(mac) != _MAC_SIZE:
            raise SignatureError("malformed signature envelope")
        key = self._keys.get(kid.decode(errors="replace"))
        if key is None:
            raise SignatureError(f"payload signed with an unknown key id {kid!r}")
        if not hmac.compare_digest(mac, self._mac(key, body, context)):
            raise SignatureError("bad signature: the payload was tampered with or forged")
        return body

    @staticmethod
    def _mac(key: bytes, body: bytes, context: bytes) -> bytes:
        mac = hmac.new(key, b"isopool/1\0", hashlib.sha256)
        mac.update(len(context).to_bytes(4, "big"))
        mac.update(context)
        mac.update(body)
        return mac.digest()
