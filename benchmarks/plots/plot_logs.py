"""Training-loss curves of several runs, from their log.jsonl, as one PNG.

    python benchmarks/plots/plot_logs.py --out docs/figures/ablation_builtin_loss.png RUN_DIR [RUN_DIR ...]

Each run gets its own panel: the losses of different metrics (pseudo-Huber,
Cauchy, EDM) are on different scales and are not comparable across rows.
Curriculum stage changes (N) are marked with vertical lines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    plt = common.pyplot()

    cols = min(3, len(args.runs))
    rows = math.ceil(len(args.runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, run in zip(axes.flat, args.runs):
        records = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]
        records = [r for r in records if "loss" in r]
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["loss"] for r in records], lw=1)
        for a, b in zip(records, records[1:]):
            if a.get("N") != b.get("N") and b.get("N") is not None:
                ax.axvline(b["step"], color="grey", lw=0.5, ls=":")
        ax.set_title(Path(run).name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(args.runs):]:
        ax.axis("off")
    fig.tight_layout()
    common.save_figure(fig, args.out, 100)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
