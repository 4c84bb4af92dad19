"""ilct makes waiting OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the user chose a policy, and
only when torch is not loaded yet (libgomp reads it once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import {first}; import os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"


@pytest.mark.parametrize("first,given,expected", [
    ("ilct", None, "PASSIVE"),
    ("ilct", "ACTIVE", "ACTIVE"),  # the user's choice stands
    ("torch, ilct", None, "unset"),  # too late to matter: ilct does not pretend
])
def test_wait_policy(first, given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == expected
