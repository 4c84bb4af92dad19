"""Shared fixtures: a small synthetic Fashion-MNIST-format dataset and a tiny trained autoencoder."""

from __future__ import annotations

import gzip
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "taef2"
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fake_fmnist(root: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """IDX gz files in the Fashion-MNIST layout: bright rectangles of class-dependent size."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = np.zeros((n, 28, 28), np.uint8)
        for k, y in enumerate(labels):
            h = 6 + 2 * int(y)
            top = rng.integers(0, 28 - h + 1)
            images[k, top : top + h, 6:22] = rng.integers(120, 255)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


# A full run's temporary files peaked at 2.1 GB here (du every 15 s, 2026-12-07); below this much free space the
# run would end in hundreds of ENOSPC errors (as stop 55's CI did), so it stops first with one line.
MIN_FREE_TMP = 4 << 30


def scratch_space_problem(folder: str, free: int) -> str | None:
    """The one line that stops the suite when `folder` has too little free space for it, else None."""
    if free >= MIN_FREE_TMP:
        return None
    return (f"the tests need about {MIN_FREE_TMP >> 30} GB free in {folder} for their tiny runs; "
            f"{free / 2**30:.1f} GB is free (old pytest-of-* folders there can be removed, or set TMPDIR to a roomier "
            "folder)")


def pytest_sessionstart(session) -> None:
    folder = tempfile.gettempdir()
    problem = scratch_space_problem(folder, shutil.disk_usage(folder).free)
    if problem:
        pytest.exit(problem, returncode=2)


def no_failure_since(request) -> Callable[[], bool]:
    """A check that no test has failed since this call: what is written for passing tests is removed, and a
    failure's is kept to read (as pytest keeps a failed test's tmp_path under the "failed" retention policy that
    pyproject.toml sets)."""
    failed = request.session.testsfailed
    return lambda: request.session.testsfailed == failed


def module_dir(request, factory, name: str) -> Path:
    """A module-scoped fixture's folder, removed when the module's tests are done unless one of them failed.
    Without this, every full run left its trained runs behind: about 23 GB a run."""
    path = factory.mktemp(name)
    passed = no_failure_since(request)

    def remove() -> None:
        if passed():
            shutil.rmtree(path, ignore_errors=True)

    request.addfinalizer(remove)
    return path


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> Path:
    return make_fake_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def tiny_autoencoder(tmp_path_factory, fake_fmnist) -> Path:
    """A built-in autoencoder trained for a few steps through the CLI."""
    from ilct.cli import main

    out = tmp_path_factory.mktemp("ae") / "ae"
    rc = main(["autoencoder", "--out", str(out), "--data-dir", str(fake_fmnist), "--steps", "5",
               "--batch-size", "16", "--no-progress", "--device", "cpu"])
    assert rc == 0
    return out


def encode_fake(out: Path, autoencoder: Path, data: Path, *extra: str) -> Path:
    """`ilct encode` of the fake Fashion-MNIST files with a built-in autoencoder, on the CPU."""
    from ilct.cli import main

    assert main(["encode", "--data", f"fashion_mnist:{data}", "--autoencoder", f"builtin:{autoencoder}",
                 "--out", str(out), "--no-progress", "--device", "cpu", *extra]) == 0
    return out


def second_autoencoder(out: Path, data: Path, seed: int) -> Path:
    """Another built-in autoencoder (1 step, another seed): different weights, same architecture."""
    from ilct.cli import main

    assert main(["autoencoder", "--out", str(out), "--data-dir", str(data), "--steps", "1", "--seed", str(seed),
                 "--no-progress", "--device", "cpu"]) == 0
    return out


def conditioned_dit(**kwargs):
    """A small DiT (eval mode) with random linear weights everywhere, adaLN-Zero's zero start undone,
    so that its condition (labels or text) changes the output."""
    import torch

    from ilct.nets.dit import build_dit

    torch.manual_seed(0)
    net = build_dit("DiT-T/4", 8, 4, class_dropout=0.1, **kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.05)
    return net.eval()


def assert_guidance_interpolates(net, cond, null_cond, null_index: int, w: float) -> None:
    """guided(net, cond, w) is f_u at w = 0, f_c at w = 1 and f_u + w (f_c - f_u) in general, and the
    2-step sampler with w = 1 equals sampling with the condition directly (labels or caption embeddings)."""
    import torch

    from ilct.objectives.consistency.sampler import consistency_sample

    from ilct.objectives.sampling import guided

    n = cond.shape[0]
    x, s = torch.randn(n, 4, 8, 8), torch.full((n,), 2.0)
    with torch.no_grad():
        f_c, f_u = net(x, s, cond), net(x, s, null_cond)
        assert not torch.allclose(f_c, f_u)
        torch.testing.assert_close(guided(net, cond, 1.0, null_index)(x, s), f_c)
        torch.testing.assert_close(guided(net, cond, 0.0, null_index)(x, s), f_u)
        torch.testing.assert_close(guided(net, cond, w, null_index)(x, s), f_u + w * (f_c - f_u), atol=1e-5, rtol=1e-5)
        noise = [torch.randn(n, 4, 8, 8) for _ in range(2)]
        a = consistency_sample(guided(net, cond, 1.0, null_index), noise, [80.0, 1.4], device=torch.device("cpu"))
        torch.testing.assert_close(a, consistency_sample(net, noise, [80.0, 1.4], labels=cond))


def crashed_copy(run: Path, to: Path, last: int, back_to: int) -> Path:
    """A copy of a finished run as a crash after checkpoint `back_to` would leave it: `last` gone, `latest` at `back_to`."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / f"step_{last:09d}")
    (to / "checkpoints" / "latest").write_text(f"step_{back_to:09d}\n")
    return to


def fixed_net_and_inputs(build, name: str, **kwargs):
    """A class-conditional backbone (build(name, 8, 4, ...), eval mode) with every weight drawn from a seeded
    generator, and fixed inputs: (net, x, t, y) for golden-value tests of the DiT and the UNet."""
    import torch

    torch.manual_seed(0)
    net = build(name, 8, 4, num_classes=10, **kwargs).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(3, 4, 8, 8, generator=g)
    return net, x, torch.tensor([0.5, -200.0, 300.0]), torch.tensor([1, 2, 10])
