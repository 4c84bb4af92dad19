"""`ilct demo`: autoencoder, latents, fmnist-ilct training and 1/2-step grids in one folder (ilct.demo)."""

from __future__ import annotations

from pathlib import Path

from ilct.cli.common import progress
from ilct.errors import IlctError
from ilct.limits import MAX_COUNT, check_ranges


def add_parser(sub, fmt) -> None:
    d = sub.add_parser("demo", help="autoencoder + latents + fmnist-ilct training + 1/2-step grids", formatter_class=fmt)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    d.add_argument("--steps", type=int, default=None, help="consistency training steps (default: the preset's)")
    d.add_argument("--ae-steps", type=int, default=1000, help="autoencoder training steps")
    d.add_argument("--quality-n", type=int, default=2000,
                   help="samples per FID of the summary (Fashion-MNIST classifier features, test split); 0 = skip")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run)


def run(args) -> int:
    # heavy (the whole training stack): loaded only when this command runs
    from ilct.config import MAX_STEPS
    from ilct.demo import run_demo

    check_ranges(args, {"steps": (1, MAX_STEPS), "ae_steps": (1, MAX_COUNT), "quality_n": (0, 1_000_000)})
    if args.quality_n != 0 and args.quality_n < 10:
        raise IlctError("--quality-n must be 0 (skip) or >= 10")
    summary = run_demo(Path(args.out), data_dir=args.data_dir, steps=args.steps, ae_steps=args.ae_steps,
                       progress=progress(args), quality_n=args.quality_n)
    return 0 if summary is not None else 130
