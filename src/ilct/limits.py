"""Bounds on what a command may ask for, checked before any work: numbers finite and in range, and sizes
that scale memory within the memory this machine has.

Every subcommand lists its numeric arguments with their ranges in one table, in its own module (`ilct.cli.sample`,
...), checked by `check_ranges` as its first step; where a size scales memory (samples kept for a grid, a batch
of images), `check_memory` refuses up front with the memory the request would need, instead of being killed later.
"""

from __future__ import annotations

import math
import os

from ilct.errors import IlctError

MAX_SAMPLING_STEPS = 1000  # network evaluations of one sample: a consistency model samples in 1 or 2; EDM's Heun 18-79
MAX_BATCH = 65536
MAX_GUIDANCE = 100.0  # classifier-free guidance weights in use lie in 0..10
MAX_SCALE = 64  # pixel enlargement of a grid or GIF
MAX_RESOLUTION = 4096
MAX_FRAMES = 1024
MAX_COUNT = 10**9  # samples, images, steps: far beyond what memory or a lifetime allows; memory decides first
MAX_LEVELS = 100_000  # discretization levels N of a TD-residual analysis (the paper's curricula end at 1281)
MAX_GIF_MS = 65535 * 10  # a GIF frame's delay is 16 bits of centiseconds
MEMORY_SHARE = 0.5  # a request may take at most this share of the memory available when it starts


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_range(name: str, value, lo: float, hi: float) -> None:
    """`value` of option `name` lies in [lo, hi] (finite; an integer option is given as an int by argparse)."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise IlctError(f"{_flag(name)} must be a finite number, got {value}")
    if not lo <= value <= hi:
        raise IlctError(f"{_flag(name)} must lie in {_num(lo)}..{_num(hi)}, got {_num(value)}")


def _num(x) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def check_ranges(args, table: dict[str, tuple[float, float]]) -> None:
    """Every option of `table` (attribute name -> (lo, hi)) in range; the first that is not, in one line."""
    for name, (lo, hi) in table.items():
        check_range(name, getattr(args, name, None), lo, hi)


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), else the physical memory, else 8 GiB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PiB"


def check_memory(nbytes: float, what: str, hint: str) -> None:
    """Refuse a request whose `what` would need more than MEMORY_SHARE of the available memory."""
    have = available_memory()
    if nbytes > MEMORY_SHARE * have:
        raise IlctError(f"{what} would need about {human_bytes(nbytes)} of memory, more than half of the "
                        f"{human_bytes(have)} available: {hint}")
