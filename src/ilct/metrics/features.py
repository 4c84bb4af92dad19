"""Feature extractors for FID and precision/recall.

- `fmnist`: a small CNN classifier trained on the Fashion-MNIST training
  labels (no Inception weights can be downloaded offline), shipped with ilct
  (`fmnist_classifier.safetensors.xz`, its record in `fmnist_classifier.json`), so that
  every machine has the same features. Its 256-d penultimate layer (before the
  ReLU) gives the features. Numbers computed with
  it are FID in Fashion-MNIST-classifier features, **not Inception FID**, and
  are comparable only with each other.
- `inception`: a TorchScript detector from a local file. The standard one,
  `inception-2015-12-05.pt` (the TensorFlow FID Inception as TorchScript, used by
  StyleGAN2-ADA, EDM and most papers' FIDs), returns its 2048-d pool3 features
  only when called as `detector(x, return_features=True)` with x the uint8
  values as float (0..255), N x 3 x H x W at the images' own size: it resizes
  to 299 x 299 itself. Called plainly it returns class probabilities, which are
  not FID features. A detector whose forward takes `return_features` is called
  that way; one without it (a generic feature network) is called plainly on
  images resized here to 299 x 299. The protocol used is in `name`. Nothing
  here can download weights; without a file the command fails with a clear message.

Extractors take uint8 (N, H, W, C) images of any size and channel count and
convert them to what they need (grayscale 32x32 for `fmnist`).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn
from tqdm import tqdm

from ilct.data.fashion_mnist import load_fashion_mnist
from ilct.errors import IlctError
from ilct.io.files import read_json, save_tensors, write_text


class FashionClassifier(nn.Module):
    """(conv-BN-ReLU) x 2 + pool, twice; a 256-d feature layer; 10 logits. Input 1x32x32 in [-1, 1]."""

    feature_dim = 256

    def __init__(self) -> None:
        super().__init__()
        def conv(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(1, 32), *conv(32, 32), nn.MaxPool2d(2),
            *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 8 * 8, self.feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(self.feature_dim, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def to_gray32(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 1, 32, 32) in [-1, 1]: channel mean, then area/bilinear resize."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2).mean(1, keepdim=True)
    if x.shape[-1] != 32 or x.shape[-2] != 32:
        mode = "area" if x.shape[-1] > 32 else "bilinear"
        x = F.interpolate(x, size=(32, 32), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x / 127.5 - 1.0


class FashionFeatures:
    name = "fmnist-classifier-256 (Fashion-MNIST classifier features; not Inception FID)"

    def __init__(self, model: FashionClassifier, meta: dict):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.meta = meta

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        out = [self.model.features(to_gray32(images[s : s + batch_size]).to(self.device)).double().cpu().numpy()
               for s in range(0, len(images), batch_size)]
        return np.concatenate(out)

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """The classifier's labels (n,) for uint8 images (n, H, W, C)."""
        out = [self.model(to_gray32(images[s : s + batch_size]).to(self.device)).argmax(1).cpu().numpy()
               for s in range(0, len(images), batch_size)]
        return np.concatenate(out)

    def fingerprint(self) -> str:
        return self.meta["fingerprint"]


@torch.no_grad()
def classifier_accuracy(model: FashionClassifier, test) -> float:
    """The classifier's accuracy on a labelled Fashion-MNIST split."""
    correct = sum(int((model(test.batch(s, s + 1000)).argmax(1) == torch.from_numpy(test.labels[s : s + 1000])).sum())
                  for s in range(0, len(test), 1000))
    return correct / len(test)


def train_fashion_classifier(root: str, out: Path, epochs: int = 6, seed: int = 0, progress: bool = True) -> FashionFeatures:
    """Adam, batch 128, light augmentation (random shifts and flips); saves weights + accuracy."""
    train, test = load_fashion_mnist(root, "train"), load_fashion_mnist(root, "test")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = FashionClassifier().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(train) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    labels = torch.from_numpy(train.labels)
    bar = tqdm(total=steps, desc="classifier", disable=not progress, dynamic_ncols=True)
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for s in range(0, len(train), 128):
            idx = perm[s : s + 128]
            x = train.batch_indices(idx.numpy())
            flip = torch.rand(len(x), generator=g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    meta = {"test_accuracy": classifier_accuracy(model, test), "epochs": epochs, "seed": seed, "feature_dim": FashionClassifier.feature_dim,
            "fingerprint": state_fingerprint(model)}
    save_tensors(model.state_dict(), out / "model.safetensors")
    write_text(out / "config.json", json.dumps(meta, indent=2))
    return FashionFeatures(model, meta)


PACKAGED = Path(__file__).with_name("fmnist_classifier.safetensors.xz")  # float16 weights, xz-compressed (< 2 MB)
PACKAGED_META = Path(__file__).with_name("fmnist_classifier.json")  # test accuracy, fingerprint, how it was made


def read_packed_tensors(path: Path) -> dict[str, torch.Tensor]:
    """An xz-compressed safetensors file, floats as float32."""
    try:
        state = load_safetensors(lzma.decompress(path.read_bytes()))
    except (lzma.LZMAError, EOFError, SafetensorError) as e:
        raise IlctError(f"cannot read {path}: {e}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def state_fingerprint(model: nn.Module) -> str:
    """A hash of the float32 state dict: the features' identity, recorded with every FID."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.cpu().numpy().tobytes())
    return "fmnist-cls-" + h.hexdigest()[:16]


def load_fashion_features(weights: Path = PACKAGED, meta_path: Path = PACKAGED_META) -> FashionFeatures:
    """The classifier shipped with ilct: fixed weights, so the same features on every machine.

    Trained once by `benchmarks/quality/fmnist_classifier.py` (train_fashion_classifier, then float16); a
    classifier trained on each machine gave other features (another fingerprint) on another CPU."""
    try:
        meta = read_json(meta_path)
        state = read_packed_tensors(weights)
        model = FashionClassifier()
        model.load_state_dict(state)
    except (OSError, IlctError, RuntimeError, ValueError) as e:
        raise IlctError(f"the Fashion-MNIST feature classifier {weights} cannot be read ({str(e).splitlines()[0]}); "
                        "reinstall ilct") from None
    want = meta.get("fingerprint") if isinstance(meta, dict) else None
    if state_fingerprint(model) != want:
        raise IlctError(f"the Fashion-MNIST feature classifier {weights} is damaged (its fingerprint is not "
                        f"{str(want)[:40]}); reinstall ilct")
    return FashionFeatures(model, meta)


def takes_return_features(net) -> bool:
    """Whether a TorchScript module's forward has a `return_features` argument (the FID Inception's)."""
    try:
        return any(a.name == "return_features" for a in net.forward.schema.arguments)
    except AttributeError:
        return False


def as_detector_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 3, H, W) holding the same 0..255 integers (gray repeated to RGB)."""
    if images.dtype != np.uint8:
        raise ValueError(f"FID features take uint8 images, got {images.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


class TorchScriptFeatures:
    """A TorchScript detector from a local file (see the module docstring for the two protocols)."""

    def __init__(self, path: str | Path, size: int = 299):
        path = Path(path)
        if not path.is_file():
            raise IlctError(f"Inception weights file not found: {path} (nothing can be downloaded here; "
                            "give the TorchScript FID Inception file with --inception-weights)")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # torch raises several types for non-TorchScript files
            raise IlctError(f"{path} is not a TorchScript feature network: {str(e).splitlines()[0]}") from None
        self.size = size
        self.return_features = takes_return_features(self.net)
        if self.return_features:
            self.name = (f"{path.name}: pool3 features (return_features=True), uint8 input as float 0..255 "
                         "at the images' own size, the detector's own resize")
        else:
            self.name = (f"{path.name}: plain call (no return_features argument: a generic feature network), "
                         f"uint8 input as float 0..255 resized here to {size}x{size} (bilinear)")
        # the protocol is part of the fingerprint: reference features cached with the plain call
        # (class probabilities, for the FID Inception) are never reused for the features call
        self._fp = "ts-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16] + ("-pool3" if self.return_features else "")

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        out = []
        for s in range(0, len(images), batch_size):
            x = as_detector_input(images[s : s + batch_size])
            if self.return_features:
                f = self.net(x, return_features=True)
            else:
                f = self.net(F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False))
            out.append(f.reshape(len(x), -1).double().numpy())
        return np.concatenate(out)

    def fingerprint(self) -> str:
        return self._fp
