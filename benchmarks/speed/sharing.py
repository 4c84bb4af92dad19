"""Two processes on one CPU: what a training step costs when the cores are shared.

While `make demo` trained on 2 cores, a second ilct process on the same cores made a step about 30x
slower, where sharing should cost about 2x. The suspect: PyTorch's OpenMP threads wait for each other at
the end of every parallel region by spinning (libgomp spins about 300,000 times before it sleeps), so
with two processes of 2 threads each on 2 cores a spinning thread holds the core that the thread it waits
for needs. This measures, in one run, a training step of the demo's model (`fmnist-ilct`: DiT-T/2 on 8x8x4
latents, batch 64, all five techniques; synthetic latents, the real `ilct.training.step.training_step`) in these
scenarios, each process started fresh with its environment:

    alone      one training process
    + train    two training processes at once (the numbers are the first one's; the second is the same)
    + matmul   a training process beside a plain torch matrix-product loop (the loop's own rate too)

under the OpenMP wait policies: libgomp's default (OMP_WAIT_POLICY unset), PASSIVE (waiting threads
sleep at once), a short spin (GOMP_SPINCOUNT=10000, then sleep), and with one thread per process (torch.set_num_threads(1)). The worker imports torch
before ilct, so the environment given here is what libgomp sees, whatever ilct's own default is.

    python benchmarks/speed/sharing.py --seconds 20 --out docs/results/cpu_sharing.json
    python benchmarks/speed/sharing.py --seconds 2 --scenarios alone  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin-10k": {"GOMP_SPINCOUNT": "10000"},
            "one-thread": {"ILCT_BENCH_THREADS": "1"}}
SCENARIOS = {"alone": ("train",), "+train": ("train", "train"), "+matmul": ("train", "matmul")}


def worker(kind: str, seconds: float) -> dict:
    import torch  # first: libgomp reads the environment now, before ilct could set anything

    if os.environ.get("ILCT_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["ILCT_BENCH_THREADS"]))
    if kind == "matmul":
        a = torch.randn(512, 512)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a = torch.tanh(a @ a.T / 512)
            n += 1
        return {"kind": kind, "matmul_per_s": n / (time.perf_counter() - t0)}
    from ilct.training.batches import Prefetcher
    from ilct.training.build import build_student, make_batch_maker
    from ilct.config import load_config
    from ilct.objectives import make_objective
    from ilct.training.step import training_step

    cfg = load_config("fmnist-ilct", ["train.device=cpu"])
    device = torch.device("cpu")
    torch.manual_seed(0)
    latents = torch.randn(2048, 4, 8, 8)
    objective = make_objective(cfg)
    model, ema, opt = build_student(cfg, device, quiet=True)
    maker = make_batch_maker(cfg, objective, latents.__getitem__, len(latents), (4, 8, 8))
    prefetch = Prefetcher(maker, 0, 100_000, device)
    times, k = [], 0
    try:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            training_step(model, ema, opt, prefetch.get(k), objective, objective.state(k, device), cfg, k)
            times.append(time.perf_counter() - t0)
            k += 1
    finally:
        prefetch.close()
    times = sorted(times[2:] or times)  # (the first steps warm up)
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"kind": kind, "steps": len(times), "step_ms_median": 1e3 * q(0.5), "step_ms_p10": 1e3 * q(0.1),
            "step_ms_p90": 1e3 * q(0.9), "img_per_s": cfg.train.batch_size / q(0.5), "threads": torch.get_num_threads()}


def scenario(kinds: tuple[str, ...], env: dict, seconds: float) -> list[dict]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "ILCT_BENCH_THREADS")}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", kind, "--seconds", str(seconds)],
                              env={**base, **env}, stdout=subprocess.PIPE, text=True) for kind in kinds]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["train", "matmul"], help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each scenario runs")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--out", help="write the results here as JSON (after every scenario)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seconds)))
        return
    result = {"command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
              "torch": __import__("torch").__version__, "seconds_per_scenario": args.seconds,
              "load_average_1min_before": round(os.getloadavg()[0], 2), "rows": []}
    for name in args.scenarios.split(","):
        for policy in args.policies.split(","):
            rows = scenario(SCENARIOS[name], POLICIES[policy], args.seconds)
            t = rows[0]
            line = {"scenario": name, "policy": policy, **{k: v for k, v in t.items() if k != "kind"},
                    "load_average_1min_after": round(os.getloadavg()[0], 2)}
            if name == "+matmul":
                line["matmul_per_s"] = rows[1]["matmul_per_s"]
            result["rows"].append(line)
            print(f"{name:8s} {policy:10s} step {t['step_ms_median']:8.1f} ms (p10 {t['step_ms_p10']:.1f}, "
                  f"p90 {t['step_ms_p90']:.1f}), {t['img_per_s']:6.1f} img/s"
                  + (f", matmul loop {line['matmul_per_s']:.1f}/s" if "matmul_per_s" in line else ""), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
