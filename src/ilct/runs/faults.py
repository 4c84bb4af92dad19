"""Fault-injection hooks for the reliability tests (tests/test_faults.py). Inert unless set.

ILCT_FAULT_NAN_STEPS      comma-separated 0-based step indices whose loss becomes NaN, each
                          once ("5,6,7"); "N+" makes every step from N on NaN, every time.
ILCT_FAULT_CHECKPOINT_DELAY  seconds to sleep after writing each checkpoint file, to widen
                          the window in which a test can kill a run mid-write.
"""

from __future__ import annotations

import os
import time

import torch

_fired: set[int] = set()


def corrupt_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
    spec = os.environ.get("ILCT_FAULT_NAN_STEPS")
    if not spec:
        return loss
    for part in spec.split(","):
        part = part.strip()
        if part.endswith("+") and step >= int(part[:-1]):
            return loss * float("nan")
        if part.isdigit() and int(part) == step and step not in _fired:
            _fired.add(step)
            return loss * float("nan")
    return loss


def checkpoint_file_written() -> None:
    delay = os.environ.get("ILCT_FAULT_CHECKPOINT_DELAY")
    if delay:
        time.sleep(float(delay))
