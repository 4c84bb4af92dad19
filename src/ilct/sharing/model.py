"""The Python API: `ilct.load(DIR)` opens an exported model (or a run folder) and `generate` draws from it.

    import ilct
    model = ilct.load("my_model")                      # an `ilct export` folder, or a run folder
    images = model.generate(class_label=3, n=4, steps=1, seed=0)             # PIL images
    clips = model.generate(prompt="a shirt moving left", output="numpy")     # uint8 (n, T, H, W, C)

Samples are `ilct sample`'s: the same EMA weights, sampler and per-sample noise, so `generate(..., seed=s)[j]` is
sample j of `ilct sample --seed s`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilct.errors import IlctError
from ilct.generate import generate
from ilct.limits import MAX_BATCH, MAX_COUNT, MAX_SAMPLING_STEPS
from ilct.nets.text import prompt_condition
from ilct.objectives import make_objective
from ilct.objectives.sampling import check_request
from ilct.runs.exported import is_export, open_export
from ilct.runs.folder import is_run
from ilct.runs.opened import OpenedRun, open_run

OUTPUTS = ("pil", "numpy")


def _count(value, name: str, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= top:
        raise IlctError(f"{name} must be an integer in 1..{top}, got {value!r}")
    return int(value)


def to_pil(images: np.ndarray) -> list:
    """uint8 (n, H, W, C) -> n PIL images; clips (n, T, H, W, C) -> n lists of T frames."""
    if images.ndim == 5:
        return [to_pil(clip) for clip in images]
    return [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in images]


class Model:
    """A trained model ready to sample: its config (`cfg`), training step and what it makes (`kind`)."""

    def __init__(self, opened: OpenedRun, source: Path):
        self.opened, self.source = opened, source
        self.cfg, self.step = opened.cfg, opened.step
        self.kind = "clips" if self.cfg.model.frames else "images"
        self.objective = make_objective(self.cfg)

    def __repr__(self) -> str:
        m = self.cfg.model
        cond = "text" if m.text_dim else f"{m.num_classes} classes" if m.num_classes > 0 else "unconditional"
        return f"ilct.Model({str(self.source)!r}: {m.arch}, {self.cfg.train.objective}, {self.kind}, {cond}, step {self.step})"

    def generate(self, prompt: str | None = None, class_label: int | list[int] | None = None, steps: int = 1,
                 guidance: float = 1.0, seed: int = 0, n: int = 1, tau: list[float] | None = None,
                 output: str = "pil", batch_size: int = 256, text_encoder: str | None = None):
        """n samples (sample j from noise seeded by (seed, j)): PIL images (clips: lists of frames), or with
        output="numpy" uint8 (n, H, W, C) / (n, T, H, W, C). `prompt` for a text model, `class_label` for a
        class-conditional one, with classifier-free guidance weight `guidance`; `tau`: the intermediate sigmas."""
        n, steps = _count(n, "n", MAX_COUNT), _count(steps, "steps", MAX_SAMPLING_STEPS)
        batch_size = _count(batch_size, "batch_size", MAX_BATCH)
        if output not in OUTPUTS:
            raise IlctError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise IlctError(f"seed must be an integer in 0..2^63-1, got {seed!r}")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise IlctError("prompt must be a non-empty string")
        check_request(self.cfg, class_label, prompt is not None, float(guidance))
        sigmas = self.objective.sigmas(steps, list(tau) if tau is not None else None)
        m = self.cfg.model
        text = prompt_condition(prompt, m.text_dim, m.text_tokens, text_encoder) if prompt is not None else None
        o = self.opened
        with torch.inference_mode():
            images = generate(o.model, o.autoencoder, o.stats, self.cfg, n, steps, int(seed), batch_size, sigmas,
                              labels=class_label, guidance=float(guidance), text=text)
        return images if output == "numpy" else to_pil(images)


def load(path: str | Path, device: str = "auto", allow_other_autoencoder: bool = False) -> Model:
    """An exported model folder (`ilct export`) or a run folder (its latest whole checkpoint), ready to sample."""
    path = Path(path)
    if is_export(path):
        return Model(open_export(path, device, allow_other_autoencoder), path)
    if is_run(path):
        return Model(open_run(path, None, device, allow_other_autoencoder), path)
    raise IlctError(f"{path} is neither an exported model (`ilct export`) nor a run folder")
