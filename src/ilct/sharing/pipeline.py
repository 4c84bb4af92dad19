"""An exported model as a diffusers pipeline (optional: `pip install "ilct[diffusers]"`).

    from ilct.sharing.pipeline import ILCTPipeline
    pipe = ILCTPipeline.from_pretrained("my_model")                  # an `ilct export` folder
    images = pipe(class_labels=3, num_images=4, num_inference_steps=1, seed=0).images

Components (the export's model_index.json): `network`, the backbone F as a diffusers `ModelMixin` with the latent
statistics; `autoencoder`, ilct's autoencoder (built-in, TAESD family or a diffusers VAE) as a `ModelMixin`; and for
consistency models `scheduler`, diffusers' stock `CMStochasticIterativeScheduler`: its c_skip, c_out, c_in and
timestep 250 ln sigma are ilct's (METHOD.md section 3), `clip_denoised=False` for latents, and its 40-level grid
holds the 2-step tau (index 22: 1.382, ilct's default). Other objectives (MeanFlow, EDM) sample with their own
ilct sampler (no scheduler).

Noise: with `seed=s`, sample j draws from the generator ilct seeds by (s, j), so the pipeline's samples are
`ilct sample --seed s`'s (equal up to float rounding of the scheduler's arithmetic; the 2-step noise is the same
when a sample's latent has a multiple of 16 numbers, as every shipped latent space does). A `generator` (one, or
one per image) draws as diffusers pipelines do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import CMStochasticIterativeScheduler, ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ilct.config import from_dict
from ilct.data.images import to_uint8
from ilct.errors import IlctError
from ilct.models import build_model
from ilct.nets.embedders import null_condition, text_condition_shape
from ilct.nets.text import prompt_condition
from ilct.objectives import make_objective
from ilct.objectives.sampling import check_request
from ilct.runs.exported import AUTOENCODER_FILE, autoencoder_ref, reference_autoencoder
from ilct.schema import latent_shape
from ilct.seeds import sample_seed
from ilct.sharing.model import to_pil

TWO_STEP_TIMESTEPS = [22, 0]  # indices on the scheduler's 40-level grid: sigma_max, then tau = 1.382


class ILCTNetwork(ModelMixin, ConfigMixin):
    """The exported network: `model` is ilct's parameterization around the backbone (`model.net` = F), with
    the latent statistics m and s the samples are denormalized with."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, ilct_config: dict):
        super().__init__()
        self.ilct = from_dict(ilct_config)
        self.model = build_model(self.ilct)
        shape = latent_shape(self.ilct)
        self.register_buffer("latent_mean", torch.zeros(shape))
        self.register_buffer("latent_std", torch.ones(shape))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # built on the CPU, weights loaded in: the backbone's position table is a computed (non-persistent)
        # buffer, which an empty-weights (meta device) start would leave unset
        kwargs["low_cpu_mem_usage"] = False
        kwargs.pop("device_map", None)
        return super().from_pretrained(*args, **kwargs)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """F(c_in x, c_noise, condition): the backbone's raw output (the scheduler applies c_skip and c_out)."""
        t = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(-1).expand(sample.shape[0])
        return self.model.net(sample, t, condition)


class ILCTAutoencoder(ModelMixin, ConfigMixin):
    """ilct's autoencoder (`ae`): its folder's AUTOENCODER_FILE names the kind and the files (copied into the
    export) or the diffusers reference; the fingerprint is checked when it loads."""

    config_name = AUTOENCODER_FILE

    @register_to_config
    def __init__(self, kind: str = "builtin", path: str = ".", fingerprint: str = "", clips: bool = False):
        super().__init__()
        self.ae: torch.nn.Module | None = None

    @classmethod
    def from_pretrained(cls, folder, subfolder: str | None = None, **_: Any):
        folder = Path(folder) / (subfolder or "")
        ref = autoencoder_ref(folder.parent)
        ae = reference_autoencoder(ref)  # clips: frame by frame, or the video VAE itself
        if ae.fingerprint() != ref["fingerprint"]:
            raise IlctError(f"{folder}: the autoencoder's fingerprint is {ae.fingerprint()}, the export was made with "
                            f"{ref['fingerprint']}")
        out = cls(ref["kind"], ref["path"], ref["fingerprint"], ref["clips"])
        out.ae = ae.eval().requires_grad_(False)
        return out

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1, 1] (clips: (B, C, T, H, W))."""
        return self.ae.decode(latents)


class ILCTPipelineOutput(BaseOutput):
    """`images`: PIL images (clips: lists of frames), or an array (np: float in [0, 1]; latent: the samples)."""

    images: list | np.ndarray | torch.Tensor


class ILCTPipeline(DiffusionPipeline):
    """One- or few-step sampling of an exported ilct model (see the module's docstring)."""

    model_cpu_offload_seq = "network->autoencoder"
    _optional_components = ["scheduler"]  # None for the objectives that sample with their own sampler

    def __init__(self, network: ILCTNetwork, autoencoder: ILCTAutoencoder, scheduler: CMStochasticIterativeScheduler | None):
        super().__init__()
        self.register_modules(network=network, autoencoder=autoencoder, scheduler=scheduler)

    def _condition(self, prompt, class_labels, n: int, guidance: float, text_encoder) -> torch.Tensor | None:
        cfg = self.network.ilct
        check_request(cfg, class_labels, prompt is not None, guidance)
        m, device = cfg.model, self.network.device
        if m.num_classes > 0:  # the null class draws unconditionally
            y = np.full(n, m.num_classes) if class_labels is None else np.broadcast_to(np.asarray(class_labels), (n,))
            return torch.as_tensor(np.array(y, np.int64), device=device)
        if m.text_dim > 0:  # the null caption (zeros) draws unconditionally
            e = prompt_condition(prompt, m.text_dim, m.text_tokens, text_encoder) if prompt is not None else None
            e = e if e is not None else torch.zeros(1, *text_condition_shape(m.text_dim, m.text_tokens))
            return e.to(device).expand(n, *e.shape[1:]).contiguous()
        return None

    def _F(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, w: float) -> torch.Tensor:
        """The backbone's output, with classifier-free guidance F_u + w (F_c - F_u) (linear: the same as on f)."""
        if cond is None or w == 1.0:
            return self.network(x, t, cond)
        null = null_condition(cond, self.network.ilct.model.num_classes)
        if w == 0.0:
            return self.network(x, t, null)
        F_c, F_u = self.network(torch.cat([x, x]), t, torch.cat([cond, null])).chunk(2)
        return F_u + w * (F_c - F_u)

    def _with_scheduler(self, n: int, steps: int, timesteps, cond, w: float, generator, latents) -> torch.Tensor:
        s, shape, device = self.scheduler, latent_shape(self.network.ilct), self.network.device
        s.set_timesteps(timesteps=timesteps or ([0] if steps == 1 else TWO_STEP_TIMESTEPS if steps == 2 else None),
                        num_inference_steps=None if (timesteps or steps <= 2) else steps, device=device)
        x = latents if latents is not None else randn_tensor((n, *shape), generator=generator, device=device)
        x = x.to(device) * s.init_noise_sigma
        for t in s.timesteps:
            F = self._F(s.scale_model_input(x, t), t, cond, w)
            x = s.step(F, t, x, generator=generator).prev_sample
        return x

    def _with_objective(self, n: int, steps: int, seed: int | None, cond, w: float) -> torch.Tensor:
        cfg = self.network.ilct
        if seed is None:
            raise ValueError(f"a {cfg.train.objective} model samples with ilct's own sampler: pass seed=")
        objective, model = make_objective(cfg), self.network.model
        f = model if cond is None else objective.condition(model, cond, w, cfg.model.num_classes)
        return objective.sample(f, seed, range(n), latent_shape(cfg), steps, None, self.network.device)

    @torch.no_grad()
    def __call__(self, prompt: str | None = None, class_labels: int | list[int] | None = None, num_images: int = 1,
                 num_inference_steps: int = 1, timesteps: list[int] | None = None, guidance_scale: float = 1.0,
                 seed: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", text_encoder: str | None = None,
                 return_dict: bool = True):
        cfg = self.network.ilct
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type must be pil, np or latent, got {output_type!r}")
        if seed is not None:  # ilct's per-sample generators: sample j of seed s is ilct's sample j
            generator = [torch.Generator().manual_seed(sample_seed(seed, j)) for j in range(num_images)]
        cond = self._condition(prompt, class_labels, num_images, guidance_scale, text_encoder)
        if self.scheduler is not None:
            x = self._with_scheduler(num_images, num_inference_steps, timesteps, cond, guidance_scale, generator, latents)
        else:
            x = self._with_objective(num_images, num_inference_steps, seed, cond, guidance_scale)
        if output_type == "latent":
            return ILCTPipelineOutput(images=x) if return_dict else (x,)
        net = self.network
        latent = x * net.latent_std / cfg.consistency.sigma_data + net.latent_mean
        pixels = self.autoencoder.decode(latent)
        images = to_pil(to_uint8(pixels)) if output_type == "pil" else ((pixels.float().clamp(-1, 1) + 1) / 2).movedim(1, -1).cpu().numpy()
        return ILCTPipelineOutput(images=images) if return_dict else (images,)
