"""What several benchmark scripts share: the job pool of the quality studies, the machine line of their reports,
the flags they hand to `ilct train` and `ilct eval`, and the writing of JSON reports and figures.

The scripts run by path (`python benchmarks/quality/ablation.py`) or as modules from the repository root
(`python -m benchmarks.quality.ablation`). Run by path, a script has only its own folder on sys.path, so each
one that imports from `benchmarks` first puts the root there, with the same two lines:

    # run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks import common  # noqa: E402
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start `cmd` with its stdout and stderr going to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def pool(cmds: list[tuple[str, list[str], Path]], parallel: int, dry_run: bool, deadline: float = 0,
         stop_running: bool = False) -> dict[str, float]:
    """Run (key, command, log) jobs, `parallel` at a time; returns seconds per key. A job that fails
    stops the benchmark. Past `deadline` (a time.time()) no new job starts, and with `stop_running`
    the running ones get SIGTERM (training checkpoints and exits 0; the table records its step)."""
    pending, active, seconds, stopped = list(cmds), [], {}, False
    while pending or active:
        late = bool(deadline) and time.time() > deadline
        while pending and len(active) < parallel and not late:
            key, cmd, log = pending.pop(0)
            if dry_run:
                print(" ".join(cmd))
                continue
            active.append((run(cmd, log), key, log, time.time()))
        if late:
            if pending:
                print(f"deadline: {len(pending)} jobs not started", flush=True)
                pending.clear()
            if stop_running and not stopped:
                for proc, *_ in active:
                    proc.terminate()
                stopped = True
        for item in list(active):
            proc, key, log, started = item
            if proc.poll() is not None:
                if proc.returncode != 0:
                    raise SystemExit(f"{key} failed; see {log}")
                seconds[key] = round(time.time() - started, 1)
                active.remove(item)
        time.sleep(0.5)
    return seconds


def call(name: str, cmd: list[str]) -> None:
    """Run `cmd` to the end; on failure stop the benchmark with the command and the end of its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {shlex.join(cmd)}\n{proc.stderr.strip()[-2000:]}")


def machine() -> str:
    """The machine line of a report: the GPU (or the host), the CPU count and torch's version."""
    import torch  # here: the scripts that only plan commands (--dry-run) start without it

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def logged_losses(run: Path) -> dict[int, float]:
    """The training loss of each logged step, from the run's log.jsonl."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def last5_mean(losses: dict[int, float], steps: list[int], digits: int) -> float:
    """The mean of `losses` over the last five of `steps` (sorted), rounded to `digits` decimals."""
    last = steps[-5:]
    return round(sum(losses[k] for k in last) / len(last), digits)


def write_training_report(what: str, device: str, rows: list[dict], out: str) -> None:
    """The JSON report of a training benchmark (precision_losses.py, unet_vs_dit.py, text_xattn.py): what, the
    device, torch, the command and the rows; nothing is written without `out`."""
    if not out:
        return
    import torch  # here: the scripts that only plan commands (--dry-run) start without it

    threads = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    report = {"what": what, "device": device if device != "cpu" else threads, "torch": torch.__version__,
              "command": "python " + " ".join(sys.argv), "rows": rows}
    with open(out, "w") as f:
        json.dump(report, f, indent=1)


def set_flags(sets: list[str]) -> list[str]:
    """`--set KEY=VALUE` for each of `sets`, in order (a later one overrides an earlier)."""
    return [a for s in sets for a in ("--set", s)]


def fid_flags(args) -> list[str]:
    """The `ilct eval` flags of a study's --features, --inception-weights, --cache-dir and --tiny (the CPU)."""
    flags = ["--features", args.features]
    flags += ["--inception-weights", args.inception_weights] if args.inception_weights else []
    flags += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    return flags + (["--device", "cpu"] if args.tiny else [])


def write_json(path: Path, data) -> None:
    """`data` as indented JSON, written atomically (a report read while a study runs is never half written);
    the folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (ImportError where matplotlib is missing)."""
    import matplotlib  # here: an optional dependency, needed only by the figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int, **savefig) -> None:
    """Write `fig` to `path` (its folder made if missing) and close it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **savefig)
    pyplot().close(fig)
