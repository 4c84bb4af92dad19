"""Bytes moved per training step by the compiled kernels, as Inductor counts them.

A step's time on a GPU that the matrix products do not explain is memory traffic
(docs/performance.md: about 39 of DiT-B/2's 85 ms on an H100). This counts that
traffic without a GPU, to compare settings on any machine: one ilct training step
(ilct.training.step.training_step: bf16 autocast, every transformer block compiled as
`ilct train` compiles them) runs at two batch sizes, and Inductor's own count of
the bytes each kernel of a block's three graphs (student forward, its backward,
the teacher's no-grad forward) reads and writes (GraphLowering.count_bytes, the
`inductor_metrics` log), times the depth, is split into

    fused    Inductor's generated kernels: norms, adaLN modulation, GELU, residual
             sums, casts (memory bound)
    extern   library kernels: matrix products and attention (their operands only)

and, from the two batch sizes, into a part per sample (activations) and a part per
step (the weights' casts to bf16). Reported at --batch.

It is an estimate of the GPU's traffic, not a measurement of it: the kernels are
Inductor's CPU ones (its fusion choices differ in places from its GPU ones); what
runs outside the blocks (embedders, final layer, loss maths, and the optimizer and
EMA: benchmarks/speed/optimizer_step.py) is not counted; CPU autocast would run LayerNorm
in bf16 where CUDA's runs it in fp32, so this script makes F.layer_norm upcast its
input under autocast as CUDA does.

    python benchmarks/speed/memory_traffic.py --model DiT-B/2 --modes "ilct,ilct+train.bf16_residual=true" \\
        --out docs/results/memory_traffic_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time

import torch
import torch.nn.functional as F

from ilct.training.accel import compile_model
from ilct.config import load_config
from ilct.objectives import make_objective
from ilct.training.build import build_student as make_student, make_batch_maker
from ilct.training.step import training_step

_layer_norm = F.layer_norm


def cuda_like_layer_norm(x, *args, **kwargs):
    """F.layer_norm as CUDA autocast runs it: in fp32 (CPU autocast would keep bf16)."""
    if torch.is_autocast_enabled(x.device.type):
        return _layer_norm(x.float(), *args, **kwargs)
    return _layer_norm(x, *args, **kwargs)


def kernel_ops(node) -> str:
    """The aten operators a scheduler node (one kernel) was fused from."""
    ops = set()
    for sub in node.get_nodes():
        for origin in getattr(sub.node, "origins", ()) if sub.node is not None else ():
            ops.add(str(origin.target).replace("aten.", "").split(".")[0])
    return ",".join(sorted(ops))


def count_step(mode: str, arch: str, batch: int, latent: int, top: int = 0) -> dict[str, int]:
    """Inductor's byte counts ({'fused', 'extern'}) of one step's transformer blocks (depth x one block's graphs);
    with `top`, also prints the largest fused kernels of one block."""
    import torch._dynamo
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    import torch._inductor.metrics as metrics
    from torch._inductor.scheduler import ExternKernelSchedulerNode

    head, *overrides = mode.split("+")
    if head != "ilct":
        raise SystemExit(f"unknown mode {mode!r}: ilct, optionally with +KEY=VALUE overrides")
    cfg = load_config("ilct", [f"model.arch={arch}", f"train.batch_size={batch}", "train.precision=bf16",
                               "train.compile=false", *overrides])  # the blocks are compiled below, alone
    cfg.model.in_channels, cfg.model.input_size = 4, latent
    inductor_config.fx_graph_cache = False  # a cache hit compiles nothing, and so counts nothing
    functorch_config.enable_autograd_cache = False
    torch._dynamo.reset()
    metrics.reset()
    torch.manual_seed(0)
    device = torch.device("cpu")
    model, ema, opt = make_student(cfg, device)
    compile_model(model, "blocks")  # one graph per grad mode, shared by all blocks
    data = torch.randn(64, 4, latent, latent)
    objective = make_objective(cfg)
    maker = make_batch_maker(cfg, objective, data.__getitem__, len(data), tuple(data.shape[1:]))
    state = objective.state(0, device)  # step 0's levels
    F.layer_norm = cuda_like_layer_norm
    try:
        training_step(model, ema, opt, maker.make(0), objective, state, cfg, 0)
    finally:
        F.layer_norm = _layer_norm
    depth = len(model.net.blocks)
    out = {"fused": 0, "extern": 0}
    for node, words in metrics.nodes_num_elem:  # (scheduler node, bytes // 4)
        out["extern" if isinstance(node, ExternKernelSchedulerNode) else "fused"] += 4 * words * depth
    fused = [(4 * w, node) for node, w in metrics.nodes_num_elem if not isinstance(node, ExternKernelSchedulerNode)]
    for size, node in sorted(fused, key=lambda z: -z[0])[:top]:
        print(f"  batch {batch}: {size / 1e6:8.1f} MB per block  {kernel_ops(node)[:100]}")
    if not out["fused"]:
        raise RuntimeError("Inductor counted no bytes: was anything compiled?")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-B/2")
    p.add_argument("--modes", default="ilct,ilct+train.bf16_residual=true")
    p.add_argument("--batch", type=int, default=128, help="the batch the counts are reported at")
    p.add_argument("--probe", type=int, nargs=2, default=(4, 8), metavar=("B1", "B2"),
                   help="the two batch sizes that are compiled and counted")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--top", type=int, default=0, help="print the K largest fused kernels of a block")
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    args = p.parse_args()
    b1, b2 = args.probe
    if not 0 < b1 < b2:
        raise SystemExit("--probe needs two batch sizes, the first smaller")
    torch._logging.set_logs(inductor_metrics=True)  # GraphLowering.count_bytes runs only with this log on
    for name, logger in list(logging.Logger.manager.loggerDict.items()):  # ... whose lines must not flood stderr
        if name.startswith("torch") and isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                handler.setLevel(logging.WARNING)
    rows = []
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        small, large = (count_step(mode, args.model, b, args.latent, args.top if b == b2 else 0) for b in (b1, b2))
        row = {"model": args.model, "mode": mode, "batch": args.batch}
        for kind in ("fused", "extern"):
            per_sample = (large[kind] - small[kind]) / (b2 - b1)
            per_step = small[kind] - b1 * per_sample
            row[f"{kind}_gb"] = round((per_step + args.batch * per_sample) / 1e9, 3)
            row[f"{kind}_mb_per_sample"] = round(per_sample / 1e6, 3)
            row[f"{kind}_mb_per_step"] = round(per_step / 1e6, 3)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["fused_gb"]
    for row in rows:
        row["fused_vs_first"] = round(row["fused_gb"] / base, 3)
    report = {"what": "bytes read + written per training step by Inductor's compiled kernels (estimate; see the docstring)",
              "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "command": "python " + " ".join(sys.argv), "rows": rows}
    print(f"{'mode':40s} {'fused GB':>9s} {'vs first':>9s} {'extern GB':>10s}")
    for row in rows:
        print(f"{row['mode']:40s} {row['fused_gb']:9.2f} {row['fused_vs_first']:9.3f} {row['extern_gb']:10.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
