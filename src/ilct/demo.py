"""`ilct demo` (what `make demo` runs): the whole path once, on a CPU, in minutes.

Fashion-MNIST -> built-in autoencoder (trained, or reused) -> cached latents ->
the `fmnist-ilct` preset -> 1-step and 2-step sample grids -> summary. Safe to
re-run: finished parts are reused, an interrupted run is resumed.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ilct.autoencoders.kl import KLAutoencoderConfig
from ilct.autoencoders.training import AutoencoderTrainSettings, train_autoencoder
from ilct.config import load_config
from ilct.data.fashion_mnist import load_fashion_mnist
from ilct.data.images import to_uint8
from ilct.errors import IlctError
from ilct.generate import generate
from ilct.io.files import read_json
from ilct.io.grid import make_grid, save_png
from ilct.latents import default_cache_dir
from ilct.metrics.evaluate import reference_features, scores
from ilct.metrics.features import load_fashion_features
from ilct.runs.checkpoint import latest_checkpoint
from ilct.runs.folder import changed_settings, check_out_dir, CONFIG_FILE, is_run, LOG_FILE
from ilct.runs.opened import open_run
from ilct.training.build import absolute_paths
from ilct.training.loop import train

PRESET = "fmnist-ilct"


QUALITY_N = 2000  # samples per FID of the demo's summary (a quick number: docs/evaluation.md for the protocol)


def preset_steps() -> int:
    """The demo's training steps: its preset's train.total_steps (the unit of the longer budgets' multiples)."""
    return load_config(PRESET, []).train.total_steps


def run_demo(out: Path, data_dir: str, steps: int | None = None, ae_steps: int = 1000, progress: bool = True,
             quality_n: int = QUALITY_N) -> dict | None:
    """The demo's summary; None when a signal stopped its training (checkpointed: running it again resumes)."""
    t0 = time.time()
    ae_dir, run_dir = out / "autoencoder", out / "run"
    cfg = demo_config(out, data_dir, steps)  # every setting checked before the autoencoder trains
    check_demo_out(out)
    if (run_dir / CONFIG_FILE).is_file():
        check_same_preset(cfg, run_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. the autoencoder
    if (ae_dir / "model.safetensors").is_file() and (ae_dir / "config.json").is_file():
        meta = read_json(ae_dir / "config.json")
        ae_metrics = meta.get("metrics", {}) if isinstance(meta, dict) and isinstance(meta.get("metrics", {}), dict) else {}
        print(f"[demo] reusing the autoencoder in {ae_dir}")
    else:
        print(f"[demo] training the built-in autoencoder ({ae_steps} steps)")
        train_set, test_set = load_fashion_mnist(data_dir, "train"), load_fashion_mnist(data_dir, "test")
        model, ae_metrics = train_autoencoder(train_set, test_set, KLAutoencoderConfig(),
                                              AutoencoderTrainSettings(steps=ae_steps), progress=progress)
        model.save(ae_dir, extra={"metrics": ae_metrics})
    print(f"[demo] autoencoder test PSNR: {ae_metrics.get('test_psnr_db', float('nan')):.2f} dB")
    t_ae = time.time() - t0

    # 2. consistency training (resumes an interrupted demo; skips a finished one)
    resume = (run_dir / CONFIG_FILE).is_file()
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None and latest.name == f"step_{cfg.train.total_steps:09d}":
        print(f"[demo] reusing the finished run in {run_dir}")
    else:
        print(f"[demo] training {PRESET} for {cfg.train.total_steps} steps into {run_dir}"
              + (" (resuming)" if resume else ""))
        result = train(cfg, run_dir, resume=resume, progress=progress)
        if result.preempted:
            print("[demo] stopped before the end of training; `make demo` again continues where it stopped")
            return None
    t_train = time.time() - t0 - t_ae

    # 3. sample grids
    run = open_run(run_dir, device="cpu")
    grids = {}
    with torch.inference_mode():
        for steps_ in (1, 2):
            images = generate(run.model, run.autoencoder, run.stats, run.cfg, 64, steps_, seed=0)
            path = out / f"samples_{steps_}step.png"
            save_png(make_grid(images), path, scale=3)
            grids[f"{steps_}-step"] = str(path)
    t_quality = time.time()
    quality = measure_quality(run, data_dir, quality_n, progress) if quality_n else None
    summary = {
        "preset": PRESET,
        "train_steps": run.step,
        "autoencoder_test_psnr_db": ae_metrics.get("test_psnr_db"),
        "quality": quality,
        "seconds": {"autoencoder": round(t_ae, 1), "train": round(t_train, 1),
                    "quality": round(time.time() - t_quality, 1), "total": round(time.time() - t0, 1)},
        "files": {
            "autoencoder": str(ae_dir), "run": str(run_dir), "log": str(run_dir / LOG_FILE), **grids,
        },
        "commands": {
            "more samples": f"ilct sample --run {run_dir} --steps 2 --n 64 --seed 1 --out samples.png",
            "schedule": f"ilct schedule --config {PRESET} --total-steps {cfg.train.total_steps}",
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] done in {summary['seconds']['total']:.0f} s")
    for name, path in summary["files"].items():
        print(f"[demo]   {name:>12}: {path}")
    if quality:
        q = quality
        print(f"[demo] quality ({q['n']} samples against the {q['reference']}, {q['features']}; "
              f"{summary['seconds']['quality']:.0f} s):")
        print(f"[demo]   1 step: FID {q['fid']['1']:.2f}, recall {q['recall']['1']:.3f}; "
              f"2 steps: FID {q['fid']['2']:.2f}, recall {q['recall']['2']:.3f}")
        print(f"[demo]   the autoencoder's floor (its reconstructions of {q['n']} test images): FID "
              f"{q['autoencoder_floor_fid']:.2f}")
    return summary


def is_demo(out: Path) -> bool:
    """Whether `out` holds an earlier demo: its autoencoder, its run or its summary, as the demo writes them."""
    ae = out / "autoencoder"
    return ((ae / "model.safetensors").is_file() and (ae / "config.json").is_file()) or is_run(out / "run") or \
        (out / "summary.json").is_file() and (out / "samples_1step.png").is_file()


def demo_config(out: Path, data_dir: str, steps: int | None):
    """The demo's training config (validated: a bad --steps is refused before anything trains)."""
    overrides = [f"autoencoder.path={out / 'autoencoder'}", f"data.root={data_dir}", f"data.cache_dir={out / 'cache'}"]
    if steps is not None:
        overrides.append(f"train.total_steps={steps}")
    return load_config(PRESET, overrides)


def check_demo_out(out: Path) -> None:
    """--out is a new or empty folder, or an earlier demo's (its autoencoder, run or summary): never a run, an
    autoencoder, a latent directory or a folder of other files (a folder that merely holds a `run` folder of its
    own, as / does, is not a demo)."""
    check_out_dir(out)
    if not out.is_dir():
        return
    if is_run(out) or (out / "model.safetensors").is_file() or (out / "meta.json").is_file() or (out / "state.json").is_file():
        raise IlctError(f"--out {out} holds a run, a checkpoint, an autoencoder or latents of its own: the demo writes "
                        "autoencoder/, run/ and cache/ into its --out; give a new folder")
    entries = list(out.iterdir())
    if entries and not is_demo(out):
        raise IlctError(f"--out {out} is not empty and holds no earlier demo ({len(entries)} entries of "
                        "its own): give a new or empty folder")


def check_same_preset(cfg, run_dir: Path) -> None:
    """A run left by an earlier version of the preset (its settings changed since: another backbone, steps, ...)
    is kept as it is, not resumed with other settings: the demo stops and says how to go on."""
    wanted = copy.deepcopy(cfg)
    absolute_paths(wanted)  # as train() compares them: the run's config holds absolute paths
    changed = changed_settings(wanted, run_dir)
    if changed:
        raise IlctError(f"{run_dir} holds a run with other settings than this demo's {PRESET} (other "
                        f"{', '.join(changed[:4])}: an earlier version of the preset, or another --steps); it is kept: "
                        f"move it away (mv {run_dir} {run_dir}.old) and run the demo again, or give another --out")


def measure_quality(run, data_dir: str, n: int, progress: bool = True) -> dict:
    """FID and recall of n 1- and 2-step samples in the Fashion-MNIST classifier's features (the classifier
    shipped with ilct, as in `ilct eval`), against the test split; and the floor the autoencoder sets: the FID of
    its reconstructions of n test images."""
    cache = default_cache_dir()
    extract = load_fashion_features()
    test = load_fashion_mnist(data_dir, "test")
    real = reference_features(extract, test, cache, progress)
    out: dict = {"split": "test", "n": n, "features": extract.name, "reference": f"{test.name} ({len(test)} images)",
                 "fid": {}, "recall": {}}
    with torch.inference_mode():
        for steps in (1, 2):
            m = scores(real, extract(generate(run.model, run.autoencoder, run.stats, run.cfg, n, steps, seed=0)), n, 0)
            out["fid"][str(steps)], out["recall"][str(steps)] = m["fid"], m["recall"]
        x = test.batch_indices(np.arange(min(n, len(test))))
        recon = torch.cat([run.autoencoder.decode(run.autoencoder.encode(b)) for b in x.split(500)])
    out["autoencoder_floor_fid"] = scores(real, extract(to_uint8(recon)), n, 0)["fid"]
    return out
