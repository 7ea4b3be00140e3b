"""SIGTERM and SIGINT in the agent (a Job deleted, its deadline passed, Ctrl-C).

The agent stops at once (an exception in the main thread unwinds it: children killed,
transactions rolled back, temporary files removed), except inside `deferred()`: there the
signal is recorded and raised at the next `check()`. The upload runs deferred, and its
stream checks between parts, because an exception in the middle of an S3 request could
arrive after the store created a multipart upload and before the client learnt its id: the
upload could then not be aborted, and would stay behind.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The agent was asked to stop before it completed."""


class _State:
    pending: str | None = None
    deferring = 0
    raised = False


_state = _State()


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _state.raised:
        return  # one exception is enough; a second would interrupt the clean-up
    _state.pending = name
    if not _state.deferring:
        check()


def install() -> Callable[[], None]:
    """Handle SIGTERM and SIGINT; returns what puts the previous handlers back."""
    _state.pending, _state.deferring, _state.raised = None, 0, False
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore


def check() -> None:
    """Raise Interrupted if a stop was asked for (and not raised yet)."""
    if _state.pending is not None and not _state.raised:
        _state.raised = True
        raise Interrupted(f"stopped by {_state.pending} before completion")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Record signals instead of raising them; the code inside calls `check()` where
    stopping is safe. Whatever is still pending afterwards is for the caller to honour."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
