"""Time of one optimizer + EMA update (no forward or backward), three ways, on one device.

    lists          train.fused_optimizer=false: multi-tensor (foreach) kernels over the
                   parameter tensors, one pass over the weights per elementwise operation
    flat           train.fused_optimizer=true, eager: the same operations on flat buffers
    flat+compile   train.fused_optimizer=true with train.compile: the RAdam update as one
                   torch.compile'd kernel, the EMA as one lerp

Each is exactly what ilct.training.step.training_step runs after the backward pass: the
device-side gradient-norm check, RAdam.step, ema_update. The gradients are
random. Memory traffic of the fused update: read theta, g, m, v and write
theta, m, v, plus the gradient copy and the EMA (reported as GB/s of that minimum).

    python benchmarks/speed/optimizer_step.py --model DiT-B/2 --device cpu --out docs/results/optimizer_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from ilct.config import load_config
from ilct.training.build import build_student as make_student
from ilct.training.step import ema_update


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-B/2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--ways", default="lists,flat,flat+compile")
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    rows = []
    for way in args.ways.split(","):
        fused, compile_ = way != "lists", way == "flat+compile"
        cfg = load_config("ilct", [f"model.arch={args.model}", f"train.fused_optimizer={str(fused).lower()}",
                                   f"train.compile={str(compile_).lower()}"])
        cfg.model.in_channels, cfg.model.input_size = 4, 32
        torch.manual_seed(0)
        model, ema, opt = make_student(cfg, device)
        params = list(model.parameters())
        n = sum(q.numel() for q in params)
        grads = [torch.randn_like(q) * 1e-3 for q in params]

        def update() -> None:
            for q, g in zip(params, grads):
                q.grad = g.clone()  # as backward leaves them: fresh tensors (not timed separately)
            norm = torch.nn.utils.get_total_norm([q.grad for q in params])
            bad = (~torch.isfinite(norm)).float()
            opt.step(found_inf=bad)
            ema_update(ema, model, cfg.train.ema_decay, keep=1.0 - bad)

        def clones() -> None:
            for q, g in zip(params, grads):
                q.grad = g.clone()

        def timed(fn, reps: int) -> float:
            for _ in range(2):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return (time.perf_counter() - t0) / reps

        t0 = time.perf_counter()
        update()  # the first call compiles (flat+compile)
        first = time.perf_counter() - t0
        ms = (timed(update, args.reps) - timed(clones, args.reps)) * 1e3
        minimum = n * 4 * (7 + 2 + 3 + 1)  # fused update + gradient copy + EMA + norm, bytes
        rows.append({"way": way, "ms": ms, "first_call_s": first, "params": n, "min_GB": minimum / 1e9,
                     "GB_per_s_of_minimum": minimum / 1e9 / (ms / 1e3)})
        print(json.dumps(rows[-1]), flush=True)
        del model, ema, opt, grads, params
    report = {"device": name, "torch": torch.__version__, "command": "python " + " ".join(sys.argv), "rows": rows}
    print(json.dumps(report))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
