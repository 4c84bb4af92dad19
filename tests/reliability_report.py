"""Writes docs/reliability.json and docs/reliability.md from the fault suites' figures.

tests/test_faults.py (kills, NaN, the first bad inputs), tests/test_hostile.py (hostile and careless
input, concurrency, signals) and tests/test_closed_world.py (every command held to train's rules) each call `record(section)` with their figures when they finish; the files are
rewritten with the figures merged, so a partial test run updates only its own part.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
JSON = DOCS / "reliability.json"

NOTES = """- **kills**: a training subprocess is killed with SIGKILL at random instants, a quarter of them while a
  checkpoint is being written (a test hook slows each checkpoint file write); after every kill the latest
  checkpoint must load completely and `--resume` must continue from it; a final `--resume` finishes the run.
  `checkpoint_writes`: whether those writes ran in the background (`train.async_checkpoint`, the default: the
  tensors copied to host memory at the step, written by a thread while training goes on). `background_save_*`:
  one more kill inside a slowed background write, after training had gone on during it; the previous
  checkpoint stays the latest, whole, and the run resumes and finishes.
- **NaN injection**: a test hook makes chosen steps' losses NaN. Isolated NaN steps are skipped and counted;
  `train.max_nonfinite` in a row roll the run back to the last checkpoint with half the learning rate;
  NaN that persists after that stops the run with one line naming the step, the checkpoint intact
  (`nan_persistent_*`: it is meant to stop, so it is not counted in `nan_survived`).
- **bad input** (`tests/test_faults.py`, the hostile table of `tests/test_hostile.py` and the closed-world table of
  `tests/test_closed_world.py`: outputs under runs, numbers before work, fingerprints, checkpoints, layouts): each case must exit
  with status 2, print exactly one line `ilct: error: ...` and no traceback, and leave the sha256 of every file
  that existed before (runs, checkpoints, autoencoders, latents, the current folder) unchanged.
- **concurrent writers**: a second `ilct train` (resume or --force) on a run that another process is training
  is refused with one line naming the holder's PID; the training run finishes whole.
- **signals at start-up and during the final save**: SIGTERM or SIGINT while a run starts ends it with 143/130
  before anything is trained (nothing changed), and during the final save with exit 0 and a whole checkpoint.
"""


def record(section: dict) -> None:
    report = json.loads(JSON.read_text()) if JSON.is_file() else {}
    report.update(section)
    # the totals over both suites (test_faults' first 19 kinds and test_hostile's table)
    for what in ("tried", "clean"):
        parts = [report.get(f"bad_inputs_{s}_{what}") for s in ("basic", "hostile")]
        if all(isinstance(v, int) for v in parts):
            report[f"bad_inputs_{what}"] = sum(parts)
    for what in ("tried", "clean"):  # issue 34's table (tests/test_closed_world.py) joins the total
        extra = report.get(f"bad_inputs_closed_world_{what}")
        if isinstance(extra, int) and isinstance(report.get(f"bad_inputs_{what}"), int):
            report[f"bad_inputs_{what}"] += extra
    report["command"] = ("make test  (tests/test_faults.py, tests/test_hostile.py and tests/test_closed_world.py "
                         "write this file)")
    report["machine"] = f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.system()} (no GPU)"
    report["date"] = time.strftime("%Y-%m-%d")
    DOCS.mkdir(exist_ok=True)
    JSON.write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in report.items() if not isinstance(v, (list, dict)) and k != "command")
    lists = "".join(f"\n{k}:\n\n" + "\n".join(f"- `{c}`" for c in v) + "\n"
                    for k, v in report.items() if isinstance(v, list))
    (DOCS / "reliability.md").write_text(
        "# Reliability\n\nWritten by `tests/test_faults.py`, `tests/test_hostile.py` and `tests/test_closed_world.py` on every `make test` "
        "(2-core CPU, no GPU).\n\n| measure | value |\n|---|---|\n" + rows + "\n\n" + NOTES + lists)
