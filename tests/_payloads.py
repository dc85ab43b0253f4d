"""Objects that crash, exit, raise or hang when pickled or unpickled.

Each class acts at one phase: ``At*Pickle`` acts in ``__reduce__`` (whoever pickles
it), ``At*Unpickle`` in the function that rebuilds it (whoever unpickles it).
The parent pickles calls and unpickles results; the worker does the opposite.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time


def _segfault():
    ctypes.string_at(0)


def _exit(code=7):
    os._exit(code)


def _sys_exit(code=5):
    sys.exit(code)


def _raise():
    raise ValueError("raised while (un)pickling")


def _hang():
    time.sleep(3600)


def _interrupt():
    raise KeyboardInterrupt("raised while (un)pickling")


class CustomBaseError(BaseException):
    """A BaseException that is not an Exception, as a hostile payload may raise."""


def _raise_base():
    raise CustomBaseError("raised while (un)pickling")


def _generator_exit():
    raise GeneratorExit


def _slow():
    time.sleep(3)


ACTIONS = {
    "segfault": _segfault,
    "exit": _exit,
    "sys_exit": _sys_exit,
    "raise": _raise,
    "hang": _hang,
    "interrupt": _interrupt,
    "base": _raise_base,
    "generator_exit": _generator_exit,
    "slow": _slow,
}


def _act_then_build(action):
    ACTIONS[action]()
    return ActAtPickle(action)  # pragma: no cover - only reached for no-op actions


def _build_plain(action):
    return Plain(action)


class Plain:
    def __init__(self, action):
        self.action = action


class ActAtPickle:
    """Performs ``action`` when pickled."""

    def __init__(self, action):
        self.action = action

    def __reduce__(self):
        ACTIONS[self.action]()
        return (_build_plain, (self.action,))


class ActAtUnpickle:
    """Performs ``action`` when unpickled."""

    def __init__(self, action):
        self.action = action

    def __reduce__(self):
        return (_act_then_build, (self.action,))


def return_act_at_pickle(action):
    """A task whose result acts when the worker pickles it."""
    return ActAtPickle(action)


def return_act_at_unpickle(action):
    """A task whose result acts when the parent unpickles it."""
    return ActAtUnpickle(action)


def take(obj):
    """A task that receives a payload object and returns its type name."""
    return type(obj).__name__


class PicklingErrorAtPickle:
    """Raises pickle.PicklingError when pickled, as the stdlib's ErrorAtPickle does."""

    def __reduce__(self):
        import pickle

        raise pickle.PicklingError("refuses to be pickled")
