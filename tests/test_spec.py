"""TaskSpec validation: every check of task arguments, as pure logic (no processes).

Each bad value raises a plain ValueError or TypeError whose message names the
parameter, so a caller sees which argument was wrong without reading isopool's code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import pytest

from isopool import _spec
from isopool._spec import TaskOptions
from tests import _tasks


# -- check_seconds / check_duration -------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), (1, 1.0), (2.5, 2.5), (1e-9, 1e-9)],
    ids=["none", "zero", "int", "float", "tiny"],
)
def test_check_seconds_valid_value_returns_float(value, expected):
    """A non-negative number (or None) comes back as float seconds."""
    result = _spec.check_seconds("timeout", value)
    assert result == expected
    assert result is None or type(result) is float


@pytest.mark.parametrize(
    "value",
    [-1, -0.001, math.nan, math.inf, -math.inf],
    ids=["negative-int", "negative-float", "nan", "inf", "minus-inf"],
)
def test_check_seconds_out_of_range_raises_value_error_naming_it(value):
    """A negative or non-finite number of seconds raises ValueError naming the parameter."""
    with pytest.raises(ValueError, match="timeout must be a non-negative number of seconds"):
        _spec.check_seconds("timeout", value)


@pytest.mark.parametrize("value", [True, "1", [1], b"1"], ids=["bool", "str", "list", "bytes"])
def test_check_seconds_wrong_type_raises_type_error_naming_it(value):
    """A value that is not a number raises TypeError naming the parameter."""
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        _spec.check_seconds("timeout", value)


def test_check_seconds_huge_int_raises_value_error_naming_it():
    """An int too large for a float is refused like any other out-of-range value.

    Regression test: it raised OverflowError, naming nothing (fixed in ab8fc47).
    """
    with pytest.raises(ValueError, match="timeout"):
        _spec.check_seconds("timeout", 10**400)


def test_check_duration_none_raises_type_error_naming_it():
    """Durations that must be given refuse None, naming the parameter."""
    with pytest.raises(TypeError, match="max_seconds"):
        _spec.check_duration("max_seconds", None)


def test_check_duration_number_returns_float():
    """check_duration returns float seconds."""
    assert _spec.check_duration("max_seconds", 3) == 3.0


# -- check_positive_int -------------------------------------------------------------------


def test_check_positive_int_accepts_one():
    """1 is a positive int."""
    assert _spec.check_positive_int("max_workers", 1) == 1


@pytest.mark.parametrize("value", [0, -3], ids=["zero", "negative"])
def test_check_positive_int_below_one_raises_value_error_naming_it(value):
    """0 and negatives are refused with ValueError naming the parameter."""
    with pytest.raises(ValueError, match="max_workers must be at least 1"):
        _spec.check_positive_int("max_workers", value)


def test_check_positive_int_allow_zero_accepts_zero():
    """allow_zero admits 0."""
    assert _spec.check_positive_int("max_restarts", 0, allow_zero=True) == 0


def test_check_positive_int_allow_zero_refuses_negative():
    """allow_zero still refuses negatives, saying non-negative."""
    with pytest.raises(ValueError, match="max_restarts must be non-negative"):
        _spec.check_positive_int("max_restarts", -1, allow_zero=True)


@pytest.mark.parametrize("value", [True, 1.0, "2", None], ids=["bool", "float", "str", "none"])
def test_check_positive_int_wrong_type_raises_type_error_naming_it(value):
    """Non-integers (bool included) raise TypeError naming the parameter."""
    with pytest.raises(TypeError, match="max_workers must be an integer"):
        _spec.check_positive_int("max_workers", value)


# -- restart, shutdown, priority ----------------------------------------------------------


@pytest.mark.parametrize("value", ["temporary", "transient", "permanent"])
def test_check_restart_known_policy_is_returned(value):
    """OTP's three restart words are accepted."""
    assert _spec.check_restart(value) == value


@pytest.mark.parametrize("value", ["sometimes", "", None, "Transient"])
def test_check_restart_unknown_policy_raises_value_error_naming_it(value):
    """Anything else raises ValueError naming restart and the allowed values."""
    with pytest.raises(ValueError, match="restart must be 'temporary', 'transient' or"):
        _spec.check_restart(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("brutal_kill", "brutal_kill"), (0, 0.0), (2, 2.0), (0.5, 0.5)],
    ids=["brutal-kill", "zero", "int", "float"],
)
def test_check_shutdown_valid_value_is_returned(value, expected):
    """A grace period in seconds or "brutal_kill" is accepted."""
    assert _spec.check_shutdown(value) == expected


def test_check_shutdown_unknown_word_raises_value_error_naming_it():
    """A string other than "brutal_kill" raises ValueError naming shutdown."""
    with pytest.raises(ValueError, match="shutdown must be a number of seconds or 'brutal_kill'"):
        _spec.check_shutdown("politely")


def test_check_shutdown_negative_raises_value_error_naming_it():
    """A negative grace period raises ValueError naming shutdown."""
    with pytest.raises(ValueError, match="shutdown"):
        _spec.check_shutdown(-1)


def test_check_shutdown_none_raises_type_error_naming_it():
    """None is not a grace period."""
    with pytest.raises(TypeError, match="shutdown"):
        _spec.check_shutdown(None)


@pytest.mark.parametrize("value", [0, 5, _spec.MAX_PRIORITY])
def test_check_priority_in_range_is_returned(value):
    """Priorities 0..MAX_PRIORITY are accepted."""
    assert _spec.check_priority(value) == value


@pytest.mark.parametrize("value", [-1, _spec.MAX_PRIORITY + 1], ids=["below", "above"])
def test_check_priority_out_of_range_raises_value_error_naming_it(value):
    """A priority outside 0..MAX_PRIORITY raises ValueError naming priority."""
    with pytest.raises(ValueError, match="priority must be between 0"):
        _spec.check_priority(value)


@pytest.mark.parametrize("value", [True, 1.0, "1"], ids=["bool", "float", "str"])
def test_check_priority_wrong_type_raises_type_error_naming_it(value):
    """A priority that is not an int raises TypeError naming priority."""
    with pytest.raises(TypeError, match="priority must be an integer"):
        _spec.check_priority(value)


# -- memory limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (2**20, 2**20),
        ("512MB", 512 * 1000**2),
        ("512mb", 512 * 1000**2),
        ("2GiB", 2 * 1024**3),
        ("1.5GB", 1_500_000_000),
        (" 3 MiB ", 3 * 1024**2),
        ("2000000", 2_000_000),
        ("4096kib", 4096 * 1024),
        ("1t", 1000**4),
    ],
    ids=[
        "none",
        "int",
        "decimal-unit",
        "lower-case",
        "binary-unit",
        "fraction",
        "spaces",
        "bare-number",
        "kib",
        "one-letter-unit",
    ],
)
def test_parse_memory_limit_valid_value_returns_bytes(value, expected):
    """Ints and strings with decimal or binary units give a byte count."""
    assert _spec.parse_memory_limit(value) == expected


@pytest.mark.parametrize(
    "value",
    ["lots", "512XB", "-5MB", "1e9", "MB", "", "5 M B"],
    ids=["word", "unknown-unit", "negative", "exponent", "no-number", "empty", "split-unit"],
)
def test_parse_memory_limit_unparsable_string_raises_value_error_naming_it(value):
    """A string that does not parse raises ValueError naming memory_limit."""
    with pytest.raises(ValueError, match="memory_limit must be bytes or a string like"):
        _spec.parse_memory_limit(value)


@pytest.mark.parametrize("value", [1024, "1KB", "0.5MiB", 0], ids=["int", "kb", "half-mib", "zero"])
def test_parse_memory_limit_below_one_mib_raises_value_error(value):
    """A limit below 1 MiB is refused (the interpreter alone needs more)."""
    with pytest.raises(ValueError, match="memory_limit must be at least 1 MiB"):
        _spec.parse_memory_limit(value)


@pytest.mark.parametrize("value", [True, 1.5e9, [1]], ids=["bool", "float", "list"])
def test_parse_memory_limit_wrong_type_raises_type_error_naming_it(value):
    """Only None, int and str are memory limits."""
    with pytest.raises(TypeError, match="memory_limit"):
        _spec.parse_memory_limit(value)


# -- resolve_function / describe_function ------------------------------------------------


def test_resolve_function_returns_the_named_function():
    """ "package.module:function" imports the module and returns the function."""
    assert _spec.resolve_function("tests._tasks:echo") is _tasks.echo


def test_resolve_function_dotted_attribute_path_is_followed():
    """The part after the colon may be a dotted path, such as Class.method."""
    assert _spec.resolve_function("isopool._spec:TaskOptions.build") == TaskOptions.build


@pytest.mark.parametrize(
    "name",
    ["tests._tasks.echo", ":echo", "tests._tasks:", ""],
    ids=["no-colon", "no-module", "no-function", "empty"],
)
def test_resolve_function_malformed_name_raises_value_error(name):
    """A name without both parts raises ValueError showing the expected form."""
    with pytest.raises(ValueError, match=re.escape("package.module:function")):
        _spec.resolve_function(name)


def test_resolve_function_missing_module_raises_value_error_naming_it():
    """A module that does not import raises ValueError naming the name and module."""
    with pytest.raises(
        ValueError, match=re.escape("module 'tests.no_such_module' does not import")
    ):
        _spec.resolve_function("tests.no_such_module:echo")


def test_resolve_function_missing_attribute_raises_value_error_naming_it():
    """A missing attribute raises ValueError naming it."""
    with pytest.raises(ValueError, match="has no attribute 'no_such_function'"):
        _spec.resolve_function("tests._tasks:no_such_function")


def test_resolve_function_not_callable_raises_value_error_naming_it():
    """An attribute that is not callable raises ValueError saying what it is."""
    with pytest.raises(ValueError, match="'os:sep' is not callable"):
        _spec.resolve_function("os:sep")


def test_resolve_function_module_raising_at_import_raises_value_error(tmp_path, monkeypatch):
    """A module whose import raises is a module that does not import: ValueError.

    Regression test: anything but ImportError escaped as itself (fixed in ab8fc47).
    """
    (tmp_path / "isopool_test_raises_at_import.py").write_text(
        "raise RuntimeError('boom at import')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="isopool_test_raises_at_import"):
        _spec.resolve_function("isopool_test_raises_at_import:fn")


class _Holder:
    def method(self):
        return self


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (_tasks.echo, "echo"),
        ("tests._tasks:echo", "tests._tasks:echo"),
        (lambda: None, "<lambda>"),
        (_Holder.method, "_Holder.method"),
        (functools.partial(_tasks.add, 1), "partial"),
        (len, "len"),
    ],
    ids=["function", "string", "lambda", "method", "partial", "builtin"],
)
def test_describe_function_returns_a_readable_name(fn, expected):
    """describe_function gives a short name for messages and logs."""
    assert _spec.describe_function(fn) == expected


# -- TaskOptions --------------------------------------------------------------------------


def test_task_options_defaults_follow_otp():
    """Defaults: no time-out, temporary, 3 restarts in 5 s, 5 s shutdown, priority 5."""
    options = TaskOptions.build()
    assert options == TaskOptions()
    assert options.timeout is None
    assert options.restart == "temporary"
    assert (options.max_restarts, options.max_seconds) == (3, 5.0)
    assert options.shutdown == 5.0
    assert options.memory_limit is None
    assert options.priority == _spec.DEFAULT_PRIORITY == 5


def test_task_options_build_normalises_values():
    """build converts seconds to float and memory strings to bytes."""
    options = TaskOptions.build(timeout=2, max_seconds=10, shutdown=1, memory_limit="2MiB")
    assert options.timeout == 2.0
    assert type(options.timeout) is float
    assert options.max_seconds == 10.0
    assert options.shutdown == 1.0
    assert options.memory_limit == 2 * 1024**2


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"restart": "always"}, ValueError, "restart"),
        ({"max_restarts": -1}, ValueError, "max_restarts"),
        ({"max_restarts": 1.5}, TypeError, "max_restarts"),
        ({"max_seconds": None}, TypeError, "max_seconds"),
        ({"shutdown": "soon"}, ValueError, "shutdown"),
        ({"memory_limit": "huge"}, ValueError, "memory_limit"),
        ({"priority": 10}, ValueError, "priority"),
    ],
    ids=[
        "timeout",
        "restart",
        "max-restarts-negative",
        "max-restarts-float",
        "max-seconds-none",
        "shutdown",
        "memory-limit",
        "priority",
    ],
)
def test_task_options_build_bad_option_raises_naming_it(kwargs, error, name):
    """build refuses each bad option with the right error type, naming the option."""
    with pytest.raises(error, match=name):
        TaskOptions.build(**kwargs)


def test_task_options_replace_changes_only_what_is_given():
    """replace returns a validated copy with the given changes; the original is intact."""
    base = TaskOptions.build(timeout=3.0, priority=2)
    changed = base.replace(priority=0)
    assert changed.priority == 0
    assert changed.timeout == 3.0
    assert base.priority == 2


def test_task_options_replace_validates_the_change():
    """replace refuses a bad value as build does."""
    with pytest.raises(ValueError, match="timeout"):
        TaskOptions().replace(timeout=-5)


def test_task_options_replace_unknown_option_raises_type_error_naming_it():
    """replace refuses names that are not options, naming them."""
    with pytest.raises(TypeError, match=r"unknown task option.*colour"):
        TaskOptions().replace(colour="red")


def test_task_options_are_frozen():
    """A TaskOptions cannot be changed in place (it is shared by many tasks)."""
    options = TaskOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.timeout = 1.0  # type: ignore[misc]


def test_task_options_have_slots():
    """TaskOptions is a slotted value object (no per-instance __dict__)."""
    assert not hasattr(TaskOptions(), "__dict__")


def test_task_options_are_hashable_and_compare_by_value():
    """Equal options are equal and hash alike."""
    assert TaskOptions.build(timeout=1) == TaskOptions.build(timeout=1.0)
    assert hash(TaskOptions.build(timeout=1)) == hash(TaskOptions.build(timeout=1.0))


def test_task_options_retry_budget_is_off_by_default():
    """Without max_retries, OTP's restart intensity decides; backoff starts at 0.1 s."""
    options = TaskOptions.build()
    assert options.max_retries is None
    assert options.backoff == 0.1


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": "3"}, TypeError, "max_retries"),
        ({"backoff": -0.5}, ValueError, "backoff"),
        ({"backoff": None}, TypeError, "backoff"),
    ],
    ids=["max-retries-negative", "max-retries-str", "backoff-negative", "backoff-none"],
)
def test_task_options_bad_retry_option_raises_naming_it(kwargs, error, name):
    """max_retries and backoff are validated like every other option."""
    with pytest.raises(error, match=name):
        TaskOptions.build(**kwargs)


# -- the bounds of durations, waits, worker counts, buffersize and memory -----------------


def test_check_seconds_max_seconds_is_accepted():
    """MAX_SECONDS itself (1e9 s, about 31 years) is a valid duration."""
    assert _spec.check_seconds("timeout", _spec.MAX_SECONDS) == _spec.MAX_SECONDS


def test_check_seconds_above_max_seconds_raises_value_error_suggesting_none():
    """Past MAX_SECONDS, a time-out that may be None says to use None for no limit."""
    with pytest.raises(ValueError, match=r"timeout must be .* up to 1e9.*use None for no limit"):
        _spec.check_seconds("timeout", _spec.MAX_SECONDS * 2)


def test_check_duration_inf_raises_value_error_without_suggesting_none():
    """A duration that may not be None does not suggest None."""
    with pytest.raises(ValueError, match=r"^shutdown must be") as info:
        _spec.check_duration("shutdown", math.inf)
    assert "None" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), (2, 2.0), (-1, 0.0), (-math.inf, 0.0), (-(10**400), 0.0)],
    ids=["none", "zero", "int", "negative", "minus-inf", "huge-negative"],
)
def test_check_wait_valid_value_returns_seconds(value, expected):
    """Waits as Future.result takes them: None, numbers, negatives meaning "do not block"."""
    assert _spec.check_wait("timeout", value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300], ids=["nan", "inf", "huge"])
def test_check_wait_nan_or_unbounded_raises_value_error_naming_it(value):
    """NaN, inf and waits past MAX_SECONDS are refused, naming the parameter."""
    with pytest.raises(ValueError, match=r"^timeout must be"):
        _spec.check_wait("timeout", value)


@pytest.mark.parametrize("value", [True, "1"], ids=["bool", "str"])
def test_check_wait_wrong_type_raises_type_error_naming_it(value):
    """A wait that is not a number raises TypeError naming the parameter."""
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        _spec.check_wait("timeout", value)


@pytest.mark.parametrize("value", [0, -1], ids=["zero", "negative"])
def test_check_max_workers_below_one_raises_value_error_in_the_stdlib_words(value):
    """max_workers <= 0 says what ProcessPoolExecutor says, and the value."""
    with pytest.raises(ValueError, match=rf"^max_workers must be greater than 0, got {value}$"):
        _spec.check_max_workers(value)


@pytest.mark.parametrize("value", [True, 2.0, "2"], ids=["bool", "float", "str"])
def test_check_max_workers_wrong_type_raises_type_error(value):
    """A worker count that is not an int raises TypeError naming max_workers."""
    with pytest.raises(TypeError, match="max_workers must be an integer"):
        _spec.check_max_workers(value)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (1, 1), (10, 10), (True, 1)], ids=str
)
def test_check_buffersize_valid_value_is_returned(value, expected):
    """None or an int >= 1; a bool passes as an int, as in Python 3.14."""
    assert _spec.check_buffersize(value) == expected


@pytest.mark.parametrize("value", ["foo", 2.0], ids=["str", "float"])
def test_check_buffersize_wrong_type_raises_3_14_type_error(value):
    """A non-int buffersize raises TypeError with 3.14's words."""
    with pytest.raises(TypeError, match=r"^buffersize must be an integer or None"):
        _spec.check_buffersize(value)


@pytest.mark.parametrize("value", [0, -1, False], ids=["zero", "negative", "false"])
def test_check_buffersize_below_one_raises_3_14_value_error(value):
    """A buffersize below 1 raises ValueError with 3.14's words and the value."""
    with pytest.raises(ValueError, match=r"^buffersize must be None or > 0, got "):
        _spec.check_buffersize(value)


def test_parse_memory_limit_max_is_accepted():
    """The largest limit setrlimit takes is accepted."""
    assert _spec.parse_memory_limit(_spec.MAX_MEMORY_LIMIT) == _spec.MAX_MEMORY_LIMIT


@pytest.mark.parametrize(
    "value",
    [_spec.MAX_MEMORY_LIMIT + 1, 10**30, "99999999TB", "9" * 400 + "MB"],
    ids=["max-plus-one", "10**30", "huge-string", "400-digit-string"],
)
def test_parse_memory_limit_beyond_setrlimit_raises_value_error_naming_it(value):
    """A limit setrlimit could never apply is refused with ValueError (never OverflowError)."""
    with pytest.raises(ValueError, match="memory_limit must be at most"):
        _spec.parse_memory_limit(value)
