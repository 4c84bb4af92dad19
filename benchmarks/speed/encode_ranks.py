"""`ilct encode` with several ranks (issue 38): the wall-clock time of encoding the same images by one process
and by `torchrun --nproc-per-node=R` ranks on this machine, each layout run --repeats times, alternating, into a
fresh latent directory each time (the first run of each layout after a warm-up of the page cache).

    one process   OMP_NUM_THREADS = --threads (all the cores in one process)
    R ranks       torchrun --standalone --nproc-per-node=R, OMP_NUM_THREADS = --threads / R per rank

Both layouts use every core, so the ratio shows what splitting the work over processes gains (or costs) on this
machine, not a speed-up from more hardware. The latents are checked equal across layouts (same bytes).

    python benchmarks/speed/encode_ranks.py --out docs/results/encode_ranks_cpu.json
    python benchmarks/speed/encode_ranks.py --tiny --autoencoder builtin:DIR --data fashion_mnist:DIR   # seconds
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

TAEF2 = Path(__file__).resolve().parents[3] / "shared" / "weights" / "taef2"


def encode_cmd(args, out: Path, ranks: int) -> tuple[list[str], dict]:
    bin_dir = Path(sys.executable).parent
    ilct = [str(bin_dir / "ilct")] if (bin_dir / "ilct").is_file() else [sys.executable, "-m", "ilct"]
    cmd = ["encode", "--data", args.data, "--autoencoder", args.autoencoder, "--out", str(out), "--limit",
           str(args.limit), "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size),
           "--no-progress", *args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // ranks))}
    if ranks == 1:
        return ilct + cmd, env
    torchrun = bin_dir / "torchrun"
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    if ilct[0] == sys.executable:
        return launcher + ["--standalone", f"--nproc-per-node={ranks}", "-m", "ilct", *cmd], env
    return launcher + ["--standalone", f"--nproc-per-node={ranks}", ilct[0], *cmd], env


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("shard_*.npy")) + [folder / "stats.safetensors"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_once(args, work: Path, ranks: int, k: int) -> tuple[float, str]:
    out = work / f"r{ranks}_{k}"
    cmd, env = encode_cmd(args, out, ranks)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"encode_ranks: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    d = digest(out)
    shutil.rmtree(out)
    return seconds, d


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion_mnist", help="ilct encode --data")
    p.add_argument("--autoencoder", default=f"taesd:{TAEF2}", help="ilct encode --autoencoder (default: TAEF2)")
    p.add_argument("--extra", nargs="*", default=["--resolution", "64", "--rgb"],
                   help="more ilct encode flags (default: TAEF2's 64 px RGB, as in the docs)")
    p.add_argument("--limit", type=int, default=6000, help="images encoded")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all (split over ranks)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="JSON report")
    p.add_argument("--tiny", action="store_true", help="seconds: 64 images in shards of 16, one repeat")
    args = p.parse_args(argv)
    if args.tiny:
        args.limit, args.shard_size, args.batch_size, args.repeats = 64, 16, 16, 1
    times: dict[int, list[float]] = {1: [], args.ranks: []}
    digests = set()
    with tempfile.TemporaryDirectory(prefix="encode_ranks_") as tmp:
        if not args.tiny:
            run_once(args, Path(tmp), 1, -1)  # warm-up: the data and weights in the page cache
        for k in range(args.repeats):
            for ranks in times:
                seconds, d = run_once(args, Path(tmp), ranks, k)
                times[ranks].append(seconds)
                digests.add(d)
                print(f"repeat {k}: {ranks} rank(s) {seconds:.2f} s ({args.limit / seconds:.0f} images/s)", flush=True)
    rows = [{"ranks": r, "omp_threads_per_rank": max(1, args.threads // r), "seconds": [round(s, 2) for s in ts],
             "median_s": round(statistics.median(ts), 2), "images_per_s": round(args.limit / statistics.median(ts), 1)}
            for r, ts in times.items()]
    ratios = [a / b for a, b in zip(times[1], times[args.ranks])]
    report = {"command": "python " + " ".join(["benchmarks/speed/encode_ranks.py",
                                               *(argv if argv is not None else sys.argv[1:])]),
              "machine": common.machine(), "date": datetime.date.today().isoformat(), "data": args.data,
              "autoencoder": args.autoencoder.split(":")[0], "extra": args.extra, "images": args.limit,
              "shard_size": args.shard_size, "rows": rows,
              "speedup_median": round(statistics.median(ratios), 2),
              "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
              "same_latents": len(digests) == 1}
    print(f"{args.ranks} ranks against one process: {report['speedup_median']}x (range "
          f"{report['speedup_range'][0]}-{report['speedup_range'][1]} over {args.repeats} pairs); "
          f"same latents: {report['same_latents']}")
    if args.out:
        common.write_json(Path(args.out), report)
    return report


if __name__ == "__main__":
    main()
