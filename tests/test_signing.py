"""Keyring: HMAC-SHA256 envelopes bound to a context, key ids for rotation, and where
the secret comes from (argument, file, environment; none means no start)."""

from __future__ import annotations

import pytest

from isopool import SignatureError
from isopool._dist.signing import Keyring

SECRET = "a-test-secret-of-32-characters!!"
OTHER = "another-test-secret-32-characters"
CONTEXT = b"queue\0job-1\0call"


@pytest.fixture
def no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither ISOPOOL_SECRET nor ISOPOOL_SECRET_FILE is set for the test."""
    monkeypatch.delenv("ISOPOOL_SECRET", raising=False)
    monkeypatch.delenv("ISOPOOL_SECRET_FILE", raising=False)


def test_keyring_sign_verify_round_trip_returns_body():
    """A body signed for a context verifies for that context and comes back unchanged."""
    keys = Keyring({"k1": SECRET})
    envelope = keys.sign(b"the body", CONTEXT)
    assert envelope != b"the body"
    assert keys.verify(envelope, CONTEXT) == b"the body"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_keyring_tampered_byte_raises_signature_error(where):
    """Flipping any one byte of the envelope (key id, MAC or body) fails verification."""
    keys = Keyring({"k1": SECRET})
    envelope = bytearray(keys.sign(b"x" * 64, CONTEXT))
    index = {"first": 5, "middle": len(envelope) // 2, "last": len(envelope) - 1}[where]
    envelope[index] ^= 0x01
    with pytest.raises(SignatureError):
        keys.verify(bytes(envelope), CONTEXT)


def test_keyring_wrong_context_raises_signature_error():
    """An envelope made for one queue/job does not verify for another (no replay)."""
    keys = Keyring({"k1": SECRET})
    envelope = keys.sign(b"body", b"queue-a\0job-1\0call")
    with pytest.raises(SignatureError, match="bad signature"):
        keys.verify(envelope, b"queue-b\0job-1\0call")


def test_keyring_same_key_id_other_secret_raises_signature_error():
    """A forger who knows the key id but not the secret cannot make a valid envelope."""
    forged = Keyring({"default": OTHER}).sign(b"body", CONTEXT)
    with pytest.raises(SignatureError, match="bad signature"):
        Keyring({"default": SECRET}).verify(forged, CONTEXT)


def test_keyring_unsigned_payload_raises_signature_error():
    """Bytes without an isopool envelope are refused as unsigned."""
    with pytest.raises(SignatureError, match="not signed"):
        Keyring({"k1": SECRET}).verify(b"\x80\x05plain pickle", CONTEXT)


def test_keyring_truncated_envelope_raises_signature_error():
    """An envelope cut short inside its MAC is refused as malformed."""
    envelope = Keyring({"k1": SECRET}).sign(b"", CONTEXT)
    with pytest.raises(SignatureError, match="malformed"):
        Keyring({"k1": SECRET}).verify(envelope[:-1], CONTEXT)


def test_keyring_unknown_key_id_raises_signature_error_naming_it():
    """An envelope signed with a key id the keyring does not know names that id."""
    envelope = Keyring({"retired": SECRET}).sign(b"body", CONTEXT)
    with pytest.raises(SignatureError, match="unknown key id b'retired'"):
        Keyring({"k2": SECRET}).verify(envelope, CONTEXT)


def test_keyring_rotation_old_key_still_verifies():
    """After rotation (k2 signs), what k1 signed still verifies, and new envelopes use k2."""
    old = Keyring({"k1": SECRET}).sign(b"old body", CONTEXT)
    rotated = Keyring({"k1": SECRET, "k2": OTHER}, current="k2")
    assert rotated.verify(old, CONTEXT) == b"old body"
    new = rotated.sign(b"new body", CONTEXT)
    assert Keyring({"k2": OTHER}).verify(new, CONTEXT) == b"new body"
    with pytest.raises(SignatureError, match="unknown key id"):
        Keyring({"k1": SECRET}).verify(new, CONTEXT)


def test_keyring_several_keys_without_current_raises_value_error():
    """With several keys the signing one must be named."""
    with pytest.raises(ValueError, match="key_id"):
        Keyring({"k1": SECRET, "k2": OTHER})


def test_keyring_short_secret_raises_value_error():
    """A secret shorter than 16 bytes is refused as guessable."""
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Keyring({"k1": "short"})


def test_keyring_load_short_secret_raises_value_error():
    """Keyring.load refuses a short secret too."""
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Keyring.load("0123456789abcde")


@pytest.mark.usefixtures("no_secret_env")
def test_keyring_load_no_secret_anywhere_raises_value_error_naming_env():
    """No argument, no file and no environment: the error says to set ISOPOOL_SECRET."""
    with pytest.raises(ValueError, match="ISOPOOL_SECRET"):
        Keyring.load()


@pytest.mark.usefixtures("no_secret_env")
def test_keyring_load_secret_from_environment_verifies_argument_signed(monkeypatch):
    """ISOPOOL_SECRET is used when no argument is given: the same key as passing it."""
    monkeypatch.setenv("ISOPOOL_SECRET", SECRET)
    from_env = Keyring.load()
    envelope = Keyring.load(SECRET).sign(b"body", CONTEXT)
    assert from_env.verify(envelope, CONTEXT) == b"body"


@pytest.mark.usefixtures("no_secret_env")
def test_keyring_load_secret_file_argument_ignores_trailing_newline(tmp_path):
    """A secret file (with the usual trailing newline) gives the same key as the secret."""
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    envelope = Keyring.load(SECRET).sign(b"body", CONTEXT)
    assert Keyring.load(secret_file=str(path)).verify(envelope, CONTEXT) == b"body"


@pytest.mark.usefixtures("no_secret_env")
def test_keyring_load_secret_file_from_environment_is_used(tmp_path, monkeypatch):
    """ISOPOOL_SECRET_FILE names a file holding the secret."""
    path = tmp_path / "secret"
    path.write_text(SECRET)
    monkeypatch.setenv("ISOPOOL_SECRET_FILE", str(path))
    envelope = Keyring.load(SECRET).sign(b"body", CONTEXT)
    assert Keyring.load().verify(envelope, CONTEXT) == b"body"


@pytest.mark.usefixtures("no_secret_env")
def test_keyring_load_missing_secret_file_raises_value_error_naming_it(tmp_path):
    """An unreadable secret file is a ValueError that names the file."""
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="cannot read secret_file"):
        Keyring.load(secret_file=str(missing))


def test_keyring_load_argument_wins_over_environment(monkeypatch):
    """An explicit secret is used even when the environment holds another one."""
    monkeypatch.setenv("ISOPOOL_SECRET", OTHER)
    envelope = Keyring.load(SECRET).sign(b"body", CONTEXT)
    with pytest.raises(SignatureError):
        Keyring.load().verify(envelope, CONTEXT)
    assert Keyring.load(SECRET).verify(envelope, CONTEXT) == b"body"


def test_keyring_repr_never_shows_secrets():
    """repr() names the key ids, never the secrets."""
    text = repr(Keyring({"k1": SECRET, "k2": OTHER}, current="k2"))
    assert "k1" in text
    assert SECRET not in text
    assert OTHER not in text
