"""FID versus training step for every row of ablation tables, one panel per latent space.

    python benchmarks/plots/plot_ablation.py --out docs/figures/ablation_gpu_fid.png \
        docs/results/ablation_builtin_gpu.json docs/results/ablation_taef2_gpu.json

Reads the `curve` of each row (benchmarks/quality/ablation.py writes it: earlier checkpoints
on --curve-n samples, the last one on --n, so the last point is lower-biased less).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--nfe", default="1", help="which NFE to plot for consistency rows (EDM rows: 35)")
    args = p.parse_args()
    plt = common.pyplot()

    fig, axes = plt.subplots(1, len(args.tables), figsize=(6.5 * len(args.tables), 4.5), squeeze=False)
    for ax, path in zip(axes[0], args.tables):
        report = json.loads(Path(path).read_text())
        for r in report["rows"]:
            key = "35" if r["name"] == "edm-diffusion" else args.nfe
            steps = [c["step"] for c in r["curve"]]
            fid = [c["fid"][key] for c in r["curve"]]
            label = f"{r['name']} s{r['seed']}" + (" (35 NFE)" if key == "35" else "")
            style = "--" if r["name"] == "edm-diffusion" else ("-" if r["seed"] == 0 else ":")
            ax.plot(steps, fid, style, marker="o", ms=3, label=label)
        latents = report["rows"][0]["latents"] if report["rows"] else "?"
        ax.set_title(f"{latents} latents: FID ({args.nfe} NFE) vs step")
        ax.set_xlabel("training step")
        ax.set_ylabel("FID (Fashion-MNIST classifier features)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, args.out, 110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
