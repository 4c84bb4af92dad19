"""Helpers that several commands share: the progress switch, the seed check, the folders a command that reads a
run must never write into, the --allow-other-* flags and the preset list of the help texts."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

from ilct.errors import IlctError


def progress(args) -> bool:
    return not getattr(args, "no_progress", False)


def check_seed(args) -> None:
    if not 0 <= args.seed < 2**63:
        raise IlctError(f"--seed must be in 0..2^63-1, got {args.seed}")


def run_inputs(run_dir, cfg) -> tuple[Path, ...]:
    """The folders a command that reads a run must never write into: the run itself (checkpoints, samples/ and
    all), its autoencoder and its latents (ilct.runs.outputs also refuses any folder ilct made)."""
    paths = [Path(run_dir)]
    for value in (cfg.autoencoder.path, cfg.data.latents):
        if value and Path(value).is_dir():
            paths.append(Path(value))
    return tuple(paths)


def provenance(args) -> dict[str, str]:
    """What a results file written by a command names about how it was made: the command line (`args.argv`, set
    by ilct.cli.main), the machine (host architecture, CPU count, torch and the GPU if any) and the UTC date."""
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}"
    return {"command": shlex.join(["ilct", *getattr(args, "argv", sys.argv[1:])]), "machine": machine,
            "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat()}


def presets() -> str:
    """The preset names, for the help texts of train and schedule."""
    # heavy (loads torch): imported only once main's signal handlers are in place (ilct.cli._Signals)
    from ilct.config import preset_names

    return ", ".join(preset_names())


def add_allow_other(p) -> None:
    p.add_argument("--allow-other-autoencoder", action="store_true",
                   help="decode through an autoencoder other than the one the run was trained with (its fingerprint, "
                        "recorded with the run's statistics, differs: the folder was retrained or replaced)")
    p.add_argument("--allow-other-checkpoint", action="store_true",
                   help="--checkpoint names a checkpoint that is not one of the run's own: use it with this run's "
                        "config, statistics and autoencoder (its architecture and shapes are checked either way)")


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """Comma-separated numbers (None when the option is not given); one line when they are not."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise IlctError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise IlctError(f"{flag} is empty")
    return values
