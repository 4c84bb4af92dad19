"""Training losses with the precision switches, against fp32: does a switch change training?

Trains the `fmnist-ilct` preset (with --arch, DiT-T/2 by default) once per setting, from the same seed (so every
step draws the same batch, noise and levels), and compares each run's logged
losses (the mean over each `--log-every` window) with the first setting's.
Rounding differences grow over training as the weights drift apart, so what to
read is each setting's difference next to plain bf16's.

    python benchmarks/quality/precision_losses.py --autoencoder .gpu/builtin_ae --data-dir .gpu/fmnist \\
        --steps 1000 --out docs/results/precision_losses_cpu.json

Settings (--settings, `;`-separated, each a space-separated list of KEY=VALUE):
fp32; train.precision=bf16; train.precision=bf16 train.bf16_residual=true.
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


DEFAULT_SETTINGS = "train.precision=fp32;train.precision=bf16;train.precision=bf16 train.bf16_residual=true"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", default=DEFAULT_SETTINGS)
    p.add_argument("--arch", default="DiT-T/2", help="model.arch (default DiT-T/2: the fmnist presets' backbone when "
                   "this was measured; train.bf16_residual is a DiT switch, and the presets now use ADM-T)")
    p.add_argument("--work", default="runs/precision_losses", help="run directories (replaced)")
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    args = p.parse_args()
    settings = [s.split() for s in args.settings.split(";") if s.strip()]
    if len(settings) < 2:
        raise SystemExit("--settings: at least two settings to compare")
    work = Path(args.work)
    rows = []
    for i, overrides in enumerate(settings):
        run = work / f"setting_{i}"
        cmd = [sys.executable, "-m", "ilct", "train", "--config", "fmnist-ilct", "--autoencoder", args.autoencoder,
               "--data-dir", args.data_dir, "--out", str(run), "--force", "--no-progress",
               "--set", f"train.total_steps={args.steps}", "--set", f"train.log_every={args.log_every}",
               "--set", "train.sample_every=0", "--set", f"train.ckpt_every={args.steps}",
               "--set", f"train.device={args.device}", "--set", f"data.cache_dir={work / 'cache'}",
               "--set", f"model.arch={args.arch}"]
        cmd += common.set_flags(overrides)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"setting {' '.join(overrides)!r} failed: {proc.stderr.strip().splitlines()[-1:]}")
        rows.append({"setting": " ".join(overrides), "seconds": round(time.perf_counter() - t0, 1),
                     "losses": common.logged_losses(run)})
        print(f"{rows[-1]['setting']}: {rows[-1]['seconds']} s", flush=True)
    base = rows[0]["losses"]
    print(f"{'setting':45s} {'mean |rel diff|':>16s} {'max':>8s} {'last-5 mean loss':>17s}")
    for row in rows:
        steps = sorted(set(base) & set(row["losses"]))
        rel = [abs(row["losses"][k] / base[k] - 1) for k in steps]
        # 3 significant digits, not 6 decimals: with the fp32 final layer a short bf16 run can differ
        # from fp32 by 1e-7, which 6 decimals would round to 0
        row["vs_first"] = {"mean_abs_rel_diff": float(f"{sum(rel) / len(rel):.3g}"),
                           "max_abs_rel_diff": float(f"{max(rel):.3g}"),
                           "logged_steps": len(steps)}
        row["last5_mean_loss"] = common.last5_mean(row["losses"], steps, 3)
        print(f"{row['setting']:45s} {row['vs_first']['mean_abs_rel_diff']:16.3g} "
              f"{row['vs_first']['max_abs_rel_diff']:8.3g} {row['last5_mean_loss']:17.3f}")
    common.write_training_report("logged training losses (fmnist-ilct) per setting, compared with the first setting's",
                                 args.device, rows, args.out)


if __name__ == "__main__":
    main()
