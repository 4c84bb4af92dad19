"""Numerical trouble is policy, not luck (STYLE lesson 9): count, skip, roll back, halve the learning rate, stop.

A step whose loss or gradient is not finite is skipped on the device (ilct.training.step: weights, moments and EMA
untouched). The counters live on the device and are read only at check points: the steps skipped since the
last check are logged and added to the run's total; `train.max_nonfinite` skipped in a row roll the run back
to its last checkpoint with half the learning rate, once; if it happens again the run stops with one line
naming the step (the last checkpoint stays intact).
"""

from __future__ import annotations

from typing import Callable

import torch

from ilct.errors import IlctError


class NonFinitePolicy:
    def __init__(self, device: torch.device, max_in_row: int, total: int = 0, lr_halved: bool = False):
        self.max_in_row, self.total, self.lr_halved = max_in_row, total, lr_halved
        # running sums on the device: loss terms, good steps, bad steps, the current run of bad steps and the
        # longest run since the last check
        self.acc = torch.zeros(3, device=device)
        self.n_good, self.n_bad = torch.zeros((), device=device), torch.zeros((), device=device)
        self.run_bad, self.run_max = torch.zeros((), device=device), torch.zeros((), device=device)

    def add(self, values: torch.Tensor, bad: torch.Tensor) -> None:
        """One step's loss terms (zeros when skipped) and its 0/1 `bad`, without a host synchronization."""
        self.acc += values
        self.n_good += 1 - bad
        self.n_bad += bad
        self.run_bad = (self.run_bad + 1) * bad
        self.run_max = torch.maximum(self.run_max, self.run_bad)

    def check(self) -> tuple[int, bool]:
        """At a check point: (steps skipped since the last check, whether a rollback is due)."""
        bad_now, longest = int(self.n_bad.item()), int(self.run_max.item())
        self.total += bad_now
        self.n_bad.zero_()
        self.run_max.copy_(self.run_bad)
        self.longest = longest
        return bad_now, longest >= self.max_in_row

    def roll_back(self, step: int, restore: Callable[[], int] | None, opt: torch.optim.Optimizer) -> int:
        """Roll back (restore() loads the last checkpoint and returns its step) and halve the learning rate; or
        stop with one line if it was halved already or there is no checkpoint (restore is None)."""
        if self.lr_halved or restore is None:
            raise IlctError(
                f"the loss or gradient was not finite for {self.longest} steps in a row, up to step {step}"
                + (" after the learning rate was already halved" if self.lr_halved else " before any checkpoint")
                + "; the last checkpoint is intact: lower train.lr or set train.grad_clip")
        k = restore()
        self.lr_halved = True
        for group in opt.param_groups:
            group["lr"] *= 0.5
        self.run_bad.zero_()
        self.run_max.zero_()
        return k

    def mean_terms(self) -> list[float]:
        """The mean loss terms over the good steps since the last read (then the sums start again)."""
        mean = (self.acc / max(float(self.n_good.item()), 1.0)).tolist()
        self.acc.zero_()
        self.n_good.zero_()
        return mean
