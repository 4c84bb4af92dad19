"""Training the built-in KL autoencoder (`ilct autoencoder`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ilct.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig
from ilct.data.images import ImageDataset


@dataclass
class AutoencoderTrainSettings:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    device: str = "cpu"
    eval_images: int = 10_000


@torch.no_grad()
def reconstruction_psnr(model: KLAutoencoder, data: ImageDataset, n: int, device: str, batch: int = 500) -> float:
    model.eval()
    mse_sum, count = 0.0, 0
    for s in range(0, min(n, len(data)), batch):
        x = data.batch(s, min(s + batch, n, len(data))).to(device)
        y = model.decode(model.encode(x)).clamp(-1, 1)
        mse_sum += ((y - x) / 2).pow(2).mean(dim=(1, 2, 3)).sum().item()
        count += len(x)
    return 10 * math.log10(1.0 / max(mse_sum / count, 1e-12))


def train_autoencoder(
    train: ImageDataset,
    test: ImageDataset,
    cfg: KLAutoencoderConfig,
    settings: AutoencoderTrainSettings,
    progress: bool = True,
) -> tuple[KLAutoencoder, dict]:
    """Adam with a cosine learning rate; returns the model and its metrics."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model = KLAutoencoder(cfg).to(settings.device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    # 5 % warm-up; OneCycleLR divides by zero when its warm-up ends exactly at step 0 (0.05 * 20 - 1 = 0): 2 steps there
    pct = 0.05 if 0.05 * settings.steps - 1 != 0 else 2 / settings.steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps, pct_start=pct)
    t0 = time.time()
    bar = tqdm(range(settings.steps), desc="autoencoder", disable=not progress, dynamic_ncols=True)
    model.train()
    for step in bar:
        idx = torch.randint(0, len(train), (settings.batch_size,), generator=gen)
        x = train.batch_indices(idx.numpy())
        loss, mse = model.loss(x.to(settings.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == settings.steps - 1:
            bar.set_postfix(mse=f"{mse.item():.4f}")
    model.eval().requires_grad_(False)
    metrics = {
        "test_psnr_db": round(reconstruction_psnr(model, test, settings.eval_images, settings.device), 3),
        "test_images": min(settings.eval_images, len(test)),
        "train_steps": settings.steps,
        "batch_size": settings.batch_size,
        "train_seconds": round(time.time() - t0, 1),
        "dataset": train.name,
    }
    return model, metrics
