"""Signals during training: SIGTERM and SIGINT at any moment end cleanly.

Before the run folder is locked (validation, loading, encoding) nothing has been written, so a
signal interrupts at once (`Interrupted`, exit 128 + signal). From `defer()` on (deleting with
--force, writing the config, training, checkpointing, the final save) a signal only sets `signal`;
the loop checks it after each step, saves a checkpoint and returns, and writes always complete.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


# Every SIGINT/SIGTERM that a handler of ilct's saw in this command (`ilct.cli.main` clears it): a signal
# that lands inside C code (safetensors, torch) can surface there as another error, a "damaged file"; the
# CLI reports it as the interruption it was.
RECEIVED: list[int] = []


class Interrupted(Exception):
    """A signal arrived before training began: nothing was trained."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def record(signum: int) -> None:
    if signum not in RECEIVED:
        RECEIVED.append(signum)


def interrupt(signum: int) -> None:
    """From a signal handler: raise `Interrupted`. Where Python cannot pass it on (the handler ran inside a weakref
    callback, such as the import system's module-lock clean-up, or a `__del__`), CPython would print "Exception
    ignored in ..." with a traceback and go on; `lost_interrupts` sends the signal again instead."""
    raise Interrupted(signum)


REDELIVER_S = 0.02  # how soon a lost interruption's signal comes again (the main thread has left the callback)


class lost_interrupts:
    """While ilct's handlers are installed: an `Interrupted` that Python could not raise (sys.unraisablehook)
    is not printed; its signal is sent again a moment later. Every other unraisable exception goes on to the
    hook that was there before."""

    def __enter__(self) -> "lost_interrupts":
        self._previous = sys.unraisablehook
        sys.unraisablehook = self._hook
        return self

    def _hook(self, unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            self._previous(unraisable)
            return
        later = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), unraisable.exc_value.signum))
        later.daemon = True  # never keeps a finished command alive
        later.start()

    def __exit__(self, *exc) -> None:
        if sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous


class StopFlag:
    """Turns SIGTERM and SIGINT into `Interrupted` (before `defer()`) or a request to stop (after it)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.deferring = False
        self._old: dict[int, Any] = {}
        self._lost = lost_interrupts()

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._lost.__enter__()
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        record(signum)
        if not self.deferring:
            interrupt(signum)

    def defer(self) -> None:
        """From now on a signal waits for the loop (writes under way always finish)."""
        self.deferring = True

    def raise_if_stopped(self) -> None:
        """Before the first step: a signal that arrived during start-up's writes ends the run here."""
        if self.signal is not None:
            raise Interrupted(self.signal)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._old:
            self._lost.__exit__()
