"""Which MeanFlow training steps run: precision (fp32, bf16) x meanflow.derivative (jvp, finite_difference).

A diagnostic for benchmarks/device/scale.py, whose MeanFlow step rows (bf16 autocast, derivative jvp) all failed
on CUDA. Each row builds the `meanflow` preset's student as ilct does (ilct.training.build.build_student: flat weights,
EMA, RAdam; eager), draws synthetic N(0, 1/4) latents through ilct's batch maker, and runs 3
ilct.training.step.training_step calls; a control row runs the `ilct` preset's consistency step in bf16. A row records
ok and ms/step (the mean of the steps after the first), or the exception's class, its first line, the innermost
frame of ilct code in its traceback and the innermost frame overall. An error raised in the backward has only
`loss.backward()` as its ilct frame, so a failed row is run once more, one step under
torch.autograd.detect_anomaly, to record the forward call that made the failing backward node.

Then three probes on one attention call, to tell ilct's code from torch's: F.scaled_dot_product_attention on the
math kernel under torch.func.jvp, then backward through the primal output (bf16 autocast; fp32; and bf16
with the autocast context covering the backward too).

    PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 python3 benchmarks/device/meanflow_check.py --out $OUT   # one GPU, < 1 min
    PYTHONPATH=$PWD/src python benchmarks/device/meanflow_check.py --tiny --out /tmp/mfcheck        # CPU rehearsal

Writes meanflow_check.json into --out after every row.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ilct.training.build import build_student, make_batch_maker
from ilct.config import load_config
from ilct.objectives import make_objective
from ilct.training.step import training_step

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

N_DATA = 256
SRC = os.sep + "ilct" + os.sep


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frame(f) -> str:
    path = f.filename
    cut = path.rfind(SRC)
    short = path[cut + 1:] if cut >= 0 else os.path.basename(path)
    return f"{short}:{f.lineno} ({f.name}: {(f.line or '').strip()[:120]})"


def describe(e: BaseException) -> dict:
    text = str(e).strip()
    frames = traceback.extract_tb(e.__traceback__)
    ilct = [f for f in frames if SRC in f.filename]
    return {"error": type(e).__name__, "first_line": text.splitlines()[0][:300] if text else "",
            "ilct_frame": frame(ilct[-1]) if ilct else None, "innermost_frame": frame(frames[-1]) if frames else None,
            "last_frames": [frame(f) for f in frames[-6:]]}


def forward_site(warned: list) -> dict:
    """From anomaly mode's warning: the failing backward node and the innermost ilct frame of its forward call."""
    for w in warned:
        msg = str(w.message)
        if "Traceback of forward call" not in msg and "Error detected in" not in msg:
            continue
        node = msg.split("Error detected in", 1)[1].split(".", 1)[0].strip() if "Error detected in" in msg else None
        lines = msg.splitlines()
        sites = [i for i, line in enumerate(lines) if SRC in line and "File " in line]
        site = None
        if sites:
            i = sites[-1]
            loc = lines[i].strip()
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            try:  # File ".../ilct/nets/dit.py", line 109, in forward
                path = loc.split('"')[1]
                site = f"{path[path.rfind(SRC) + 1:]}:{loc.split('line ')[1].split(',')[0]} ({code[:120]})"
            except IndexError:
                site = loc
        return {"backward_node": node, "forward_ilct_frame": site}
    return {"backward_node": None, "forward_ilct_frame": None, "anomaly_warnings": len(warned)}


def make_cfg(preset: str, arch: str, shape, batch: int, precision: str, derivative: str | None):
    overrides = [f"model.arch={arch}", f"train.batch_size={batch}", f"train.precision={precision}",
                 "train.compile=false"]
    if derivative:
        overrides.append(f"meanflow.derivative={derivative}")
    cfg = load_config(preset, overrides)
    cfg.model.in_channels, cfg.model.input_size, cfg.model.frames = shape[0], shape[-1], 0
    return cfg


def run_steps(cfg, shape, device, steps: int, anomaly: bool = False) -> list[float]:
    torch.manual_seed(0)
    model, ema, opt = build_student(cfg, device, quiet=True)
    objective = make_objective(cfg)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((N_DATA, *shape), generator=g) * 0.5
    labels = torch.randint(0, cfg.model.num_classes, (N_DATA,), generator=g) if cfg.model.num_classes > 0 else None
    maker = make_batch_maker(cfg, objective, latents.__getitem__, N_DATA, tuple(shape), labels)
    state = objective.state(0, device)
    times = []
    for k in range(steps):
        batch = maker.make(k).to(device)
        sync(device)
        t0 = time.perf_counter()
        if anomaly:
            with torch.autograd.detect_anomaly(check_nan=False):
                values, bad = training_step(model, ema, opt, batch, objective, state, cfg, k)
        else:
            values, bad = training_step(model, ema, opt, batch, objective, state, cfg, k)
        sync(device)
        times.append(time.perf_counter() - t0)
        if not torch.isfinite(values).all() or bad.item():
            raise RuntimeError(f"step {k}: non-finite loss or gradient (values {values.tolist()})")
    return times


def step_row(preset, precision, derivative, args, device) -> dict:
    shape = (4, args.latent, args.latent)
    cfg = make_cfg(preset, args.model, shape, args.batch, precision, derivative)
    rec = {"row": f"{preset} {precision} {derivative or 'consistency'}", "preset": preset, "precision": precision,
           "derivative": derivative, "arch": args.model, "latent": "x".join(map(str, shape)), "batch": args.batch}
    t0 = time.time()
    try:
        times = run_steps(cfg, shape, device, args.steps)
        rec.update(ok=True, ms_per_step=1e3 * sum(times[1:]) / max(len(times) - 1, 1), first_step_ms=1e3 * times[0])
        if device.type == "cuda":
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    except Exception as e:  # recorded; the other rows still run
        rec.update(ok=False, **describe(e))
        if not args.no_anomaly:
            gc.collect()
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                try:
                    run_steps(cfg, shape, device, 1, anomaly=True)
                    rec["anomaly"] = {"note": "passed under anomaly mode"}
                except Exception as e2:
                    rec["anomaly"] = {**forward_site(warned), "error": describe(e2)["first_line"]}
    rec["wall_s"] = round(time.time() - t0, 1)
    return rec


def probe_row(name: str, dtype: torch.dtype, autocast_backward: bool, device, args) -> dict:
    """One attention call (math kernel) under torch.func.jvp, then backward through the primal output."""
    rec = {"row": f"probe: sdpa math + jvp + backward, {name}", "probe": True}
    B, H, T, D = (2, 2, 16, 8) if args.tiny else (8, 12, 256, 64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, H * D, generator=g).to(device).requires_grad_()
    w = torch.randn(H * D, 3 * H * D, generator=g).to(device).mul_(D ** -0.5).requires_grad_()
    tx = torch.randn(B, T, H * D, generator=g).to(device)
    use_autocast = dtype != torch.float32

    def f(x_):
        q, k, v = (x_ @ w).reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v).float()

    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            with sdpa_kernel(SDPBackend.MATH):
                y, ty = torch.func.jvp(f, (x,), (tx,))
            loss = y.square().mean()
            if autocast_backward:
                loss.backward()
        if not autocast_backward:
            loss.backward()
        rec.update(ok=True, out_dtype=str(y.dtype), tangent_dtype=str(ty.dtype))
    except Exception as e:
        rec.update(ok=False, **describe(e))
    return rec


def summary(rec: dict) -> str:
    if rec["ok"]:
        ms = f"{rec['ms_per_step']:.1f} ms/step" if "ms_per_step" in rec else f"ok ({rec.get('out_dtype')})"
        return f"{rec['row']}: ok, {ms}"
    line = f"{rec['row']}: {rec['error']}: {rec['first_line'][:160]} [at {rec['ilct_frame']}; innermost {rec['innermost_frame']}]"
    if "anomaly" in rec:
        line += f" [anomaly: {rec['anomaly']}]"
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="meanflow_check_out")
    p.add_argument("--model", default="DiT-B/2")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-anomaly", action="store_true", help="skip the anomaly-mode rerun of a failed row")
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal: DiT-T/4, 8x8x4 latents, batch 4")
    args = p.parse_args()
    if args.tiny:
        args.device, args.model, args.latent, args.batch = "cpu", "DiT-T/4", 8, 4
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "argv": "python " + " ".join(sys.argv),
              "step": f"ilct.training.step.training_step, eager, {args.steps} steps (ms/step: mean after the first)", "rows": []}

    def record(rec: dict) -> None:
        report["rows"].append(rec)
        common.write_json(out / "meanflow_check.json", report)
        print(summary(rec), flush=True)

    print(f"{name}, torch {torch.__version__}", flush=True)
    record(step_row("ilct", "bf16", None, args, device))  # the control: consistency, bf16
    for precision in ("fp32", "bf16"):
        for derivative in ("jvp", "finite_difference"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            record(step_row("meanflow", precision, derivative, args, device))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    record(probe_row("fp32", torch.float32, False, device, args))
    record(probe_row("bf16 autocast, backward outside it", torch.bfloat16, False, device, args))
    record(probe_row("bf16 autocast, backward inside it", torch.bfloat16, True, device, args))


if __name__ == "__main__":
    main()
