"""The two backbones at an equal step budget: a DiT and an ADM UNet of similar size.

Trains the `fmnist-ilct` preset once per backbone, from the same seed (so every
step draws the same batch, noise and levels), and reports each network's
parameter count, wall-clock seconds and logged losses (the mean over each
`--log-every` window). The defaults pair DiT-T/2 (4.17M parameters, the CPU
presets' backbone) with ADM-S (4.59M, sized to match); the paper's runs used
the ADM UNet (docs/method.md, "The backbone: DiT or the ADM UNet").

    python benchmarks/quality/unet_vs_dit.py --autoencoder runs/ae --data-dir /usr/share/datasets/fashion-mnist \\
        --steps 2000 --out docs/results/unet_vs_dit.json

Losses of two different networks are not a quality measure on their own (the
consistency loss depends on the network's own teacher); sample and score the
run folders under --work with `ilct eval` for FID. `--tiny` is a seconds-long
run for the tests: 4 steps of DiT-T/4 against ADM-T at batch 8.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


PRESET = "fmnist-ilct"


def parameters(arch: str) -> tuple[int, str]:
    """The parameter count and class of the backbone `arch` on the preset's latents (8x8x4)."""
    from ilct.config import load_config
    from ilct.nets import backbone_family
    from ilct.models import build_model

    net = build_model(load_config(PRESET, [f"model.arch={arch}"])).net
    return sum(p.numel() for p in net.parameters()), backbone_family(arch)


def train(arch: str, args: argparse.Namespace, work: Path) -> dict:
    run = work / arch.replace("/", "_")
    cmd = [sys.executable, "-m", "ilct", "train", "--config", PRESET, "--autoencoder", args.autoencoder,
           "--data-dir", args.data_dir, "--out", str(run), "--force", "--no-progress",
           "--set", f"model.arch={arch}", "--set", f"train.total_steps={args.steps}",
           "--set", f"train.log_every={args.log_every}", "--set", "train.sample_every=0",
           "--set", f"train.ckpt_every={args.steps}", "--set", f"train.device={args.device}",
           "--set", f"data.cache_dir={work / 'cache'}"]
    if args.batch_size:
        cmd += ["--set", f"train.batch_size={args.batch_size}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arch} failed: {proc.stderr.strip().splitlines()[-1:]}")
    n, family = parameters(arch)
    logged = common.logged_losses(run)
    return {"arch": arch, "family": family, "parameters": n, "seconds": round(time.perf_counter() - t0, 1),
            "run": str(run), "losses": logged, "last5_mean_loss": common.last5_mean(logged, sorted(logged), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dit", default="DiT-T/2")
    p.add_argument("--unet", default="ADM-S")
    p.add_argument("--steps", type=int, default=2000, help="the step budget of each run (the preset's: 2000)")
    p.add_argument("--batch-size", type=int, default=0, help="0 = the preset's (64)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="runs/unet_vs_dit", help="run directories (replaced)")
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    p.add_argument("--tiny", action="store_true", help="4 steps of DiT-T/4 and ADM-T at batch 8 (the tests)")
    args = p.parse_args()
    if args.tiny:
        args.dit, args.unet, args.steps, args.batch_size, args.log_every = "DiT-T/4", "ADM-T", 4, 8, 2
    work = Path(args.work)
    rows = [train(arch, args, work) for arch in (args.dit, args.unet)]
    print(f"{'arch':10s} {'family':6s} {'parameters':>12s} {'seconds':>8s} {'last-5 mean loss':>17s}")
    for r in rows:
        print(f"{r['arch']:10s} {r['family']:6s} {r['parameters']:12,d} {r['seconds']:8.1f} {r['last5_mean_loss']:17.4f}")
    common.write_training_report(f"{PRESET} with a DiT and an ADM UNet at an equal step budget ({args.steps} steps), same seed",
                                 args.device, rows, args.out)


if __name__ == "__main__":
    main()
