"""`ilct autoencoder`: train the built-in KL autoencoder on Fashion-MNIST."""

from __future__ import annotations

import math

from ilct.cli.common import check_seed, progress
from ilct.errors import IlctError
from ilct.limits import MAX_BATCH, MAX_COUNT, check_ranges

RANGES = {"steps": (1, MAX_COUNT), "batch_size": (1, MAX_BATCH), "latent_channels": (1, 1024)}


def add_parser(sub, fmt) -> None:
    a = sub.add_parser("autoencoder", help="train the built-in KL autoencoder on Fashion-MNIST", formatter_class=fmt)
    a.add_argument("--out", required=True, help="directory for model.safetensors and config.json")
    a.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX files")
    a.add_argument("--steps", type=int, default=1000)
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--latent-channels", type=int, default=4)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="auto")
    a.add_argument("--force", action="store_true", help="replace an autoencoder already in --out")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=run)


def run(args) -> int:
    # heavy (torch): loaded only when this command runs
    import torch

    from ilct.autoencoders.kl import KLAutoencoderConfig
    from ilct.autoencoders.training import AutoencoderTrainSettings, train_autoencoder
    from ilct.data.fashion_mnist import load_fashion_mnist
    from ilct.models import resolve_device
    from ilct.runs.folder import check_out_dir

    check_ranges(args, RANGES)
    if not (math.isfinite(args.lr) and 0 < args.lr <= 10):
        raise IlctError(f"--lr must be in (0, 10], got {args.lr}")
    check_seed(args)
    out = check_out_dir(args.out)
    is_ae = (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    if is_ae and not args.force:
        raise IlctError(f"{out} already holds an autoencoder: pass --force to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_ae:
        raise IlctError(f"--out {out} is not empty and holds no autoencoder: choose a new or empty folder")
    train_set = load_fashion_mnist(args.data_dir, "train", 32)
    test_set = load_fashion_mnist(args.data_dir, "test", 32)
    device = str(resolve_device(args.device))
    settings = AutoencoderTrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device)
    model, metrics = train_autoencoder(train_set, test_set, KLAutoencoderConfig(latent_channels=args.latent_channels),
                                       settings, progress=progress(args))
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise IlctError(f"autoencoder training diverged (weights not finite; lower --lr): nothing saved to {out}")
    model.cpu().save(out, extra={"metrics": metrics})
    print(f"autoencoder saved to {out}: test PSNR {metrics['test_psnr_db']:.2f} dB on {metrics['test_images']} images "
          f"({metrics['train_seconds']:.0f} s)")
    return 0
