"""Per-rank batch preparation against world size (issue 38): the host time one rank spends per step making its
batch (ilct.training.batches.BatchMaker.make: data indices, noise, the objective's level draw, the gather of its
latents), simulated for 1 to 64 ranks in one process, before and after draw groups.

    before   train.draw_groups = 1: every rank draws the whole global batch and keeps its slice
    after    train.draw_groups = W (the default, resolved to the world size): each rank draws its own group

Each row times rank 0 of W ranks (every rank's work is the same size) at the global batch --batch of --shape
latents (default 4096 of 4x32x32: DiT-B/2 at 256 px, as in the issue), the consistency preset's level draw, OT
off (its cost is per rank either way); the median of --repeats calls after one warm-up, with the min and max.

    python benchmarks/speed/rank_batches.py --out docs/results/rank_batches_cpu.json
    python benchmarks/speed/rank_batches.py --tiny   # seconds: a check of the script
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from ilct.config import load_config  # noqa: E402
from ilct.objectives import make_objective  # noqa: E402
from ilct.training.batches import BatchMaker  # noqa: E402


def time_rank(data: torch.Tensor, batch: int, world: int, groups: int, repeats: int) -> dict:
    cfg = load_config("fmnist-ict", ["train.total_steps=1000"])
    maker = BatchMaker(data.__getitem__, len(data), tuple(data.shape[1:]), None, batch, 0,
                       make_objective(cfg).draw, False, 0, world, groups)
    maker.make(0)  # warm-up
    times = []
    for k in range(1, repeats + 1):
        t0 = time.perf_counter()
        maker.make(k)
        times.append(time.perf_counter() - t0)
    return {"median_ms": round(1e3 * statistics.median(times), 3), "min_ms": round(1e3 * min(times), 3),
            "max_ms": round(1e3 * max(times), 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4096, help="global batch")
    p.add_argument("--shape", default="4,32,32", help="latent shape C,H,W")
    p.add_argument("--n-data", type=int, default=2048, help="latents to gather from (random)")
    p.add_argument("--worlds", default="1,2,4,8,16,32,64")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", help="JSON report")
    p.add_argument("--tiny", action="store_true", help="seconds: batch 64 of 2x4x4, worlds 1,2,4, 2 repeats")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.shape, args.n_data, args.worlds, args.repeats = 64, "2,4,4", 32, "1,2,4", 2
    shape = tuple(int(s) for s in args.shape.split(","))
    data = torch.randn(args.n_data, *shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for world in (int(w) for w in args.worlds.split(",")):
        before = time_rank(data, args.batch, world, 1, args.repeats)
        after = time_rank(data, args.batch, world, world, args.repeats)
        rows.append({"world": world, "samples_drawn_before": args.batch, "samples_drawn_after": args.batch // world,
                     "before": before, "after": after,
                     "speedup": round(before["median_ms"] / after["median_ms"], 2)})
        print(f"W = {world:3d}: before {before['median_ms']:9.2f} ms, after {after['median_ms']:9.2f} ms "
              f"({rows[-1]['speedup']}x)", flush=True)
    report = {"command": "python " + " ".join(["benchmarks/speed/rank_batches.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": common.machine(), "threads": torch.get_num_threads(),
              "date": datetime.date.today().isoformat(), "batch": args.batch, "shape": list(shape), "rows": rows}
    if args.out:
        common.write_json(Path(args.out), report)
    return report


if __name__ == "__main__":
    main()
