"""Framing and serialization: bytes in, bytes out, no pipes or processes.

A pipe may hand the monitor any slice of the byte stream, so the FrameReader is
fed every split of a stream and must give the same frames each time.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
import threading

import pytest

from isopool import ProtocolError
from isopool._core import wire as _wire
from isopool._core.wire import FrameReader, RemoteTraceback
from tests import _tasks


def frame(kind: int, task_id: int, payload: bytes) -> bytes:
    return _wire.pack_header(kind, task_id, len(payload)) + payload


FRAMES = [
    (_wire.RESULT, 1, b"first"),
    (_wire.ERROR, 2, b""),
    (_wire.BAD_PAYLOAD, 2**64 - 1, bytes(range(256)) * 2),
    (_wire.CALL, 7, b"x"),
]
STREAM = b"".join(frame(*f) for f in FRAMES)


# -- headers ------------------------------------------------------------------------------


def test_header_is_sixteen_bytes():
    """The fixed header is 16 bytes: version, kind, flags, length, task id."""
    assert _wire.HEADER.size == 16
    assert len(_wire.pack_header(_wire.RESULT, 1, 0)) == 16


def test_pack_header_fields_unpack_in_order():
    """pack_header writes the version, kind, zero flags, length and task id."""
    header = _wire.pack_header(_wire.ERROR, 12345, 678)
    assert _wire.HEADER.unpack(header) == (_wire.VERSION, _wire.ERROR, 0, 678, 12345)


def test_pack_header_oversized_payload_raises_value_error():
    """A payload longer than the 4-byte length field allows is refused."""
    with pytest.raises(ValueError, match="exceeds"):
        _wire.pack_header(_wire.RESULT, 1, _wire.MAX_PAYLOAD + 1)


# -- FrameReader --------------------------------------------------------------------------


def test_frame_reader_whole_stream_in_one_feed_gives_every_frame():
    """Several frames in one feed come back together, in order."""
    assert FrameReader().feed(STREAM) == FRAMES


def test_frame_reader_split_at_every_byte_gives_the_same_frames():
    """A stream cut at any byte boundary yields the same frames, none twice."""
    for split in range(len(STREAM) + 1):
        reader = FrameReader()
        frames = reader.feed(STREAM[:split]) + reader.feed(STREAM[split:])
        assert frames == FRAMES, split
        assert reader.pending == 0, split


def test_frame_reader_every_two_splits_give_the_same_frames():
    """A stream cut into three pieces at any two points yields the same frames."""
    data = frame(_wire.RESULT, 1, b"abc") + frame(_wire.ERROR, 2, b"") + frame(_wire.CALL, 3, b"z")
    expected = [(_wire.RESULT, 1, b"abc"), (_wire.ERROR, 2, b""), (_wire.CALL, 3, b"z")]
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            reader = FrameReader()
            frames = reader.feed(data[:i]) + reader.feed(data[i:j]) + reader.feed(data[j:])
            assert frames == expected, (i, j)


def test_frame_reader_one_byte_at_a_time_gives_every_frame():
    """Feeding single bytes yields each frame exactly when its last byte arrives."""
    reader = FrameReader()
    frames = []
    for i in range(len(STREAM)):
        frames.extend(reader.feed(STREAM[i : i + 1]))
    assert frames == FRAMES


def test_frame_reader_partial_frame_is_pending():
    """Bytes of an incomplete frame are kept (pending) until the rest arrives."""
    data = frame(_wire.RESULT, 9, b"payload")
    reader = FrameReader()
    assert reader.feed(data[:20]) == []
    assert reader.pending == 20
    assert reader.feed(data[20:]) == [(_wire.RESULT, 9, b"payload")]
    assert reader.pending == 0


def test_frame_reader_empty_feed_gives_nothing():
    """Feeding no bytes yields no frames."""
    assert FrameReader().feed(b"") == []


def test_frame_reader_large_payload_in_chunks_arrives_whole():
    """A multi-megabyte payload fed in pipe-sized chunks arrives whole."""
    payload = bytes(range(256)) * 16384  # 4 MiB
    data = frame(_wire.RESULT, 5, payload)
    reader = FrameReader()
    frames = []
    for start in range(0, len(data), 65536):
        frames.extend(reader.feed(data[start : start + 65536]))
    assert frames == [(_wire.RESULT, 5, payload)]


def test_frame_reader_copies_what_it_keeps_so_the_buffer_can_be_reused():
    """Readers feed views of one reused buffer: a frame split across two reads is intact."""
    data = frame(_wire.RESULT, 1, b"alpha") + frame(_wire.RESULT, 2, b"bravo-charlie")
    cut = len(data) - 4
    scratch = bytearray(64)
    view = memoryview(scratch)
    reader = FrameReader()
    scratch[:cut] = data[:cut]
    first = reader.feed(view[:cut])
    scratch[:] = b"\xff" * len(scratch)  # the next read overwrites the buffer
    scratch[:4] = data[cut:]
    second = reader.feed(view[:4])
    assert first + second == [(_wire.RESULT, 1, b"alpha"), (_wire.RESULT, 2, b"bravo-charlie")]
    assert all(type(payload) is bytes for _kind, _id, payload in first + second)


@pytest.mark.parametrize(
    ("version", "kind"),
    [(_wire.VERSION + 1, _wire.RESULT), (0, _wire.RESULT), (_wire.VERSION, 0), (_wire.VERSION, 99)],
    ids=["newer-version", "zero-version", "zero-kind", "unknown-kind"],
)
def test_frame_reader_malformed_header_raises_protocol_error(version, kind):
    """A header with another version or an unknown kind raises ProtocolError."""
    header = _wire.HEADER.pack(version, kind, 0, 0, 1)
    with pytest.raises(ProtocolError, match="malformed frame header"):
        FrameReader().feed(header)


def test_frame_reader_malformed_header_after_a_good_frame_raises_protocol_error():
    """A bad header later in the same feed is still detected."""
    bad = _wire.HEADER.pack(_wire.VERSION, 200, 0, 0, 2)
    with pytest.raises(ProtocolError):
        FrameReader().feed(frame(_wire.RESULT, 1, b"ok") + bad)


def test_frame_reader_malformed_header_in_pieces_raises_once_complete():
    """A bad header fed in pieces raises when its 16th byte arrives, not before."""
    bad = _wire.HEADER.pack(42, _wire.RESULT, 0, 0, 1)
    reader = FrameReader()
    assert reader.feed(bad[:15]) == []
    with pytest.raises(ProtocolError):
        reader.feed(bad[15:])


def test_protocol_error_is_an_isopool_error():
    """ProtocolError belongs to isopool's hierarchy."""
    import isopool

    assert issubclass(ProtocolError, isopool.IsopoolError)


# -- dumps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [1, "text", b"bytes", [1, 2.5, None], {"a": (1, 2)}, _tasks.echo, ValueError("x")],
    ids=["int", "str", "bytes", "list", "dict", "function", "exception"],
)
def test_dumps_plain_object_uses_the_standard_pickler(obj):
    """Objects the standard pickler handles are pickled by it (it is the fast path)."""
    assert _wire.dumps(obj) == pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def test_dumps_lambda_falls_back_to_cloudpickle():
    """A lambda, which the standard pickler refuses, is pickled by value."""
    data = _wire.dumps(lambda x: x * 3)
    assert pickle.loads(data)(5) == 15


def test_dumps_closure_falls_back_to_cloudpickle():
    """A closure keeps its captured values."""
    factor = 7

    def times(x):
        return x * factor

    assert pickle.loads(_wire.dumps(times))(6) == 42


def test_dumps_main_reference_is_pickled_by_value(monkeypatch):
    """A function the standard pickler would name as __main__.f is sent by value."""

    def main_function(x):
        return x + 1

    main_function.__module__ = "__main__"
    main_function.__qualname__ = "isopool_test_main_function"
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "isopool_test_main_function", main_function, raising=False)
    by_reference = pickle.dumps(main_function, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"__main__" in by_reference  # the standard pickler succeeded, by name
    data = _wire.dumps(main_function)
    assert data != by_reference
    monkeypatch.delattr(main, "isopool_test_main_function")
    # The worker's __main__ does not have it: the pickle must not need it either.
    assert pickle.loads(data)(1) == 2


def test_dumps_unpicklable_object_raises():
    """An object neither pickler can handle raises (the caller reports it)."""
    with pytest.raises(Exception, match="lock"):
        _wire.dumps(threading.Lock())


def test_dumps_call_round_trips_the_call():
    """dumps_call packs (fn, args, kwargs, memory_limit) for a worker."""
    data = _wire.dumps_call(_tasks.add, (1, 2), {"k": 3}, 2**20)
    assert pickle.loads(data) == (_tasks.add, (1, 2), {"k": 3}, 2**20)


# -- exceptions and remote tracebacks -------------------------------------------------------


def _caught(fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def test_loads_exception_keeps_the_type_and_message():
    """An exception crosses with its own type and message."""
    exc = _caught(_tasks.raise_value_error, "remote boom")
    restored = _wire.loads_exception(_wire.dumps_exception(exc)[0])
    assert type(restored) is ValueError
    assert str(restored) == "remote boom"


def test_loads_exception_chains_remote_traceback_as_cause():
    """The worker's traceback text is chained as __cause__, a RemoteTraceback."""
    exc = _caught(_tasks.raise_value_error, "remote boom")
    restored = _wire.loads_exception(_wire.dumps_exception(exc)[0])
    cause = restored.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_value_error" in cause.tb
    assert "raise ValueError(message)" in cause.tb
    assert "ValueError: remote boom" in cause.tb


def test_remote_traceback_str_quotes_the_text():
    """RemoteTraceback prints the worker's traceback between triple quotes."""
    assert str(_wire.remote_traceback("Traceback: here\n")) == '\n"""\nTraceback: here\n"""'


def test_dumps_exception_unpicklable_returns_the_pickling_error():
    """An exception that cannot be pickled gives what pickling raised (the worker reports it)."""
    exc = ValueError("holds a lock")
    exc.lock = threading.Lock()
    data, failure = _wire.dumps_exception(exc)
    assert data == b""
    assert isinstance(failure, TypeError)
    assert "lock" in str(failure)


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """A frozen dataclass exception: it refuses every setattr, __cause__ included."""

    code: int


class KeywordOnlyError(Exception):
    """An exception whose constructor cannot be called with its args alone."""

    def __init__(self, message, *, code):
        super().__init__(message)
        self.code = code


def test_frozen_dataclass_exception_crosses_as_itself():
    """A frozen dataclass exception comes back as itself, with the remote traceback attached."""
    restored = _wire.loads_exception(_wire.dumps_exception(FrozenError(7))[0])
    assert type(restored) is FrozenError
    assert restored.code == 7
    assert isinstance(restored.__cause__, RemoteTraceback)


def test_keyword_only_exception_crosses_as_itself():
    """An exception whose __init__ needs keywords comes back as itself with its attributes."""
    restored = _wire.loads_exception(_wire.dumps_exception(KeywordOnlyError("bad", code=3))[0])
    assert type(restored) is KeywordOnlyError
    assert restored.args == ("bad",)
    assert restored.code == 3


def test_attach_traceback_falls_back_to_a_note():
    """An exception that refuses __cause__ even through object.__setattr__ gets a note."""

    class Stubborn(Exception):
        def __setattr__(self, name, value):
            raise AttributeError(name)

    exc = Stubborn("x")
    _wire.attach_traceback(exc, "the worker's traceback")
    assert exc.__cause__ is not None or any(
        "the worker's traceback" in note for note in getattr(exc, "__notes__", [])
    )


def test_loads_exception_of_a_non_exception_raises_type_error():
    """A payload that is not an exception is refused."""
    with pytest.raises(TypeError, match="expected an exception"):
        _wire.loads_exception(pickle.dumps(("not an exception", "tb")))


def test_format_exception_includes_the_traceback():
    """format_exception gives the traceback text as the worker saw it."""
    text = _wire.format_exception(_caught(_tasks.raise_value_error, "seen"))
    assert text.startswith("Traceback (most recent call last):")
    assert text.rstrip().endswith("ValueError: seen")


@pytest.mark.parametrize(
    ("cls", "expected"),
    [(ValueError, "ValueError"), (RemoteTraceback, "concurrent.futures.process._RemoteTraceback")],
    ids=["builtin", "module-class"],
)
def test_qualified_name_names_module_and_class(cls, expected):
    """Builtins are named bare; other classes with their module."""
    assert _wire.qualified_name(cls) == expected
