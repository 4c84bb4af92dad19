"""Signals during training: SIGTERM and SIGINT at any moment end cleanly.

Before the run folder is locked (validation, loading, encoding) nothing has been written, so a
signal interrupts at once (`Interrupted`, exit 128 + signal). From `defer()` on (deleting with
--force, writing the config, training, checkpointing, the final save) a signal only sets `signal`;
the loop checks it after each step, saves a checkpoint and returns, and writes always complete.
"""

from __future__ import annotations

import signal
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


class StopFlag:
    """Turns SIGTERM and SIGINT into `Interrupted` (before `defer()`) or a request to stop (after it)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.deferring = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        RECEIVED.append(signum)
        if not self.deferring:
            raise Interrupted(signum)

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
