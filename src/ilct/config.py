"""Typed run configuration: dataclasses, presets, YAML load/dump, validation.

A run is described by one `Config`. Presets live in `ilct/presets/*.yaml`; a
preset may name a `base:` preset and override only what differs, so the `ict`
and `ilct` presets differ exactly in the `method:` section (the paper's five
techniques, METHOD.md section 4). Every value is checked when loaded; an
invalid one raises `IlctError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ilct.errors import IlctError
from ilct.io.files import read_text


@dataclass
class DataConfig:
    """Where the training images come from (they are encoded once and cached)."""

    dataset: str = "fashion_mnist"  # images: fashion_mnist | image_folder | emoji; clips: moving_fmnist | emoji_clips | video_folder
    root: str = "/usr/share/datasets/fashion-mnist"  # data directory, image or video folder, or emoji font
    split: str = "train"  # train | test; Fashion-MNIST also fit | val (train minus / only its last twelfth, 5,000);
    # clips also heldout (only the held-out caption pairs)
    resolution: int = 32  # image side (Fashion-MNIST: 28x28 padded to 32, then resized)
    rgb: bool = False  # render grayscale data as RGB (for RGB autoencoders such as TAEF2)
    labels_from_subfolders: bool = False  # image_folder: first-level sub-folders are classes
    frames: int = 8  # clips: frames per clip
    frame_stride: int = 1  # clips: every frame_stride-th frame of the video or motion
    caption_holdout: str = ""  # regex: images whose caption matches are left out of training (held-out prompts)
    latents: str = ""  # a latent directory from `ilct encode`; "" -> encode via the cache
    cache_dir: str = ""  # latent cache; "" -> $ILCT_CACHE or ~/.cache/ilct


@dataclass
class AutoencoderConfig:
    """The frozen autoencoder whose latent space the model is trained in."""

    kind: str = "builtin"  # builtin | taesd | diffusers
    path: str = ""  # `ilct autoencoder` output, a TAESD-family weights folder, or a diffusers id / folder


@dataclass
class ModelConfig:
    """The backbone F of f = c_skip x + c_out F(c_in x, c_noise) (METHOD.md section 3)."""

    arch: str = "DiT-T/2"  # a name from ilct.nets.ARCHS: a DiT (DiT-B/2, ...) or an ADM UNet (ADM-T, ..., ADM-LCT)
    in_channels: int | None = None  # latent channels; None -> taken from the data
    input_size: int | None = None  # latent side; None -> taken from the data
    frames: int | None = None  # latent frames of a clip; 0 = images (no time axis); None -> taken from the data
    dropout: float = 0.0
    num_classes: int = 0  # 0 = unconditional; -1 = from the data (largest label + 1)
    class_dropout: float = 0.1  # label (or caption) dropout to the null condition, when conditional
    text_dim: int = 0  # 0 = no text; 384 = conditioned on caption embeddings (all-MiniLM-L6-v2, ilct.nets.text)
    text_tokens: int = 0  # 0 = the pooled caption embedding only (adaLN); L > 0 = also the caption's first L token
    #                       embeddings ([CLS] and [SEP] included, padded, masked), cross-attended in every DiT block
    # DiT only: the authors' later DiT used relu and no q/k/v bias (docs/method.md, "The backbone")
    mlp_act: str = "gelu"  # the DiT MLP's activation: gelu (tanh approximation) | relu
    qkv_bias: bool = True  # a bias in the DiT attention's q/k/v projection
    norm_eps: float = 1e-6  # eps of every LayerNorm of the DiT
    # DiT only, for clips (an image is a clip of one frame): space-time patches and attention (ilct.nets.dit)
    patch_t: int = 1  # latent frames per space-time patch (model.frames must be a multiple)
    attention: str = "full"  # full: all space-time tokens | factorized: within each frame, then across frames (extra weights)


@dataclass
class ConsistencyConfig:
    """The iCT recipe (METHOD.md section 3); constants as in the paper."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    s0: int = 10  # initial discretization steps of the curriculum
    s1: int = 640  # final discretization steps (iCT used 1280)
    p_mean: float = -1.1  # discretized log-normal level sampling
    p_std: float = 2.0
    c_scale: float = 0.00054  # fixed c = c_scale * sqrt(D), D = C*H*W
    c_floor: float = 0.0  # with method.adaptive_c: c(N) >= c_floor * fixed c (0: the paper; docs/stability.md)


@dataclass
class MethodConfig:
    """The paper's five techniques (METHOD.md section 4), one switch each.

    All off (and metric pseudo_huber) is the iCT baseline; all on is the paper.
    """

    metric: str = "pseudo_huber"  # 1. cauchy | cauchy_element (per element, authors' cauchy_new) | pseudo_huber | l2 | geman_mcclure
    diffusion_loss: bool = False  # 2. early-timestep diffusion loss
    lambda_diff: float = 5.0  #    lambda_diff, the diffusion loss's weight (code)
    diffusion_fraction: float = 0.75  #    levels i >= floor(fraction * N)
    ot_coupling: bool = False  # 3. exact minibatch optimal-transport pairing
    adaptive_c: bool = False  # 4. c(N) = exp(-1.15 ln(N-1) - 0.85) after stage 1
    nsln: bool = False  # 5. Non-scaling LayerNorm for the q/k norms


@dataclass
class MeanFlowConfig:
    """MeanFlow (METHOD.md section 7; read with train.objective = meanflow, else it keeps these defaults)."""

    p_mean: float = -0.4  # times: sigmoid(p_mean + p_std N(0, 1)), two draws, t = max and r = min
    p_std: float = 1.0
    equal_fraction: float = 0.75  # share of samples with r = t (flow matching); the paper's best
    derivative: str = "jvp"  # du/dt: jvp (one forward-mode pass) | finite_difference (central, step fd_eps)
    fd_eps: float = 1.0e-3
    metric: str = "adaptive"  # adaptive: sg(w) ||Delta||^2, w = 1/(||Delta||^2 + c)^p | l2 | cauchy (technique 1)
    p: float = 1.0  # the adaptive weight's power (0: plain L2)
    c: float = 1.0e-3  # the adaptive weight's c, and the Cauchy metric's c
    guidance_w: float = 1.0  # guidance trained in: v -> w v + (1 - w - kappa) u(z,t,t | null) + kappa u(z,t,t | y)
    guidance_kappa: float = 0.0  # (w = 1, kappa = 0: the unguided v; label-dropped samples always keep v)
    time_scale: float = 1.0  # S: the network's time inputs are S t and S (t - r)
    two_step_m: float = 0.5  # the intermediate time of 2-step sampling: 1 -> m -> 0
    # AlphaFlow (ilct.objectives.meanflow.alphaflow): the target moves from flow matching (alpha 1) to MeanFlow (alpha 0)
    alpha_curriculum: bool = False  # the switch (off: MeanFlow from step 0)
    alpha_start: float = 0.0  # fractions of train.total_steps: alpha 1 before start, 0 after end,
    alpha_end: float = 1.0  #   a sigmoid of slope alpha_gamma between
    alpha_gamma: float = 25.0


@dataclass
class TrainConfig:
    """Optimizer, budget and run-time settings (METHOD.md section 3, Optimizer)."""

    objective: str = "consistency"  # a name from ilct.objectives.OBJECTIVES: consistency | edm (Heun-sampled reference) | meanflow
    init_from: str = ""  # warm start: a run folder whose latest EMA backbone weights this run starts from ("" = fresh)
    total_steps: int = 400_000
    batch_size: int = 128
    lr: float = 1e-4
    warmup_steps: int = 0  # the learning rate ramped linearly over the first W steps (0: none, the paper's; ilct.training.optim)
    lr_decay: str = "none"  # none (the paper's) | linear | cosine: after the warm-up the lr falls towards lr_final (ilct.training.optim)
    lr_final: float = 0.0  # with lr_decay: the lr reached at the end, as a fraction of train.lr
    weight_decay: float = 1e-4
    adam_eps: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    ema_decay: float = 0.9999
    precision: str = "fp32"  # fp32 | bf16 (autocast; the loss maths stay fp32)
    bf16_residual: bool = False  # with precision=bf16: the DiT's residual stream in bf16 too, not fp32
    compile: bool = False  # torch.compile each transformer block (ilct.training.accel)
    cuda_graphs: bool = False  # with compile, on CUDA: the whole network with CUDA graphs (mode reduce-overhead)
    fused_optimizer: bool = True  # weights in one flat buffer (ilct.training.flat): RAdam and EMA as a few kernels, one with compile
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    log_every: int = 100
    sample_every: int = 5000
    ckpt_every: int = 5000
    keep_checkpoints: int = 3
    num_sample_images: int = 64  # images in the periodic 1-step grids
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops
    # choosing a checkpoint without the test set (ilct.metrics.monitor): FID of fid_n EMA samples every
    # fid_every steps against the training split's statistics; the best step is kept and named in best.json
    fid_every: int = 0  # 0 = off
    fid_n: int = 1000  # samples per measurement
    fid_features: str = "fmnist"  # fmnist (the Fashion-MNIST classifier shipped with ilct) | inception
    fid_inception_weights: str = ""  # with fid_features=inception: a TorchScript FID Inception file


@dataclass
class BranchConfig:
    """Where a branched run started (`ilct train --branch-from`, ilct.training.branch): written by ilct, not set by hand.

    A branch starts from another run's checkpoint (student, EMA, optimizer moments, step) with the source's
    config except `changes`; all three are empty / 0 in a run that is not a branch.
    """

    run: str = ""  # the source run folder (absolute)
    step: int = 0  # the source checkpoint's step: the branch trains from step + 1 on
    changes: str = ""  # the keys changed from the source's config, as `--set` values: "method.adaptive_c=false; ..."


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    meanflow: MeanFlowConfig = field(default_factory=MeanFlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys renamed since runs were made with them: a config.yaml written then still loads (and resumes).
RENAMED = {"method.diffusion_weight": "lambda_diff"}

MAX_STEPS = 999_999_999  # checkpoint folders are step_XXXXXXXXX
MAX_FRAMES = 1024  # data.frames and data.frame_stride
MAX_TEXT_TOKENS = 256  # the sentence encoder's own limit (all-MiniLM-L6-v2: max_seq_length 256)
# Bounds far beyond any use, so that a typo (or a hostile value) is refused here rather than exhausting memory later.
MAX_RESOLUTION = 4096  # data.resolution, model.input_size (sides in pixels / latents)
MAX_CHANNELS = 1024  # model.in_channels (latent channels: 4 for SD, 16 for FLUX, 128 for deep-compression VAEs)
MAX_CLASSES = 100_000  # model.num_classes (ImageNet-21k has 21,841)
MAX_TEXT_DIM = 8192  # model.text_dim (caption embeddings: 384 for all-MiniLM-L6-v2, 4096 for T5-XXL)
MAX_LEVELS = 100_000  # consistency.s0 / s1, discretization steps (the paper's curricula end at 1280)
MAX_GRID_IMAGES = 4096  # train.num_sample_images, kept in memory for each periodic grid

# Allowed values of the string fields that are choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("fashion_mnist", "image_folder", "emoji", "moving_fmnist", "emoji_clips", "video_folder"),
    "data.split": ("train", "test", "heldout", "fit", "val"),
    "model.mlp_act": ("gelu", "relu"),
    "model.attention": ("full", "factorized"),
    "autoencoder.kind": ("builtin", "taesd", "diffusers"),
    "method.metric": ("cauchy", "cauchy_element", "pseudo_huber", "l2", "geman_mcclure"),
    "meanflow.derivative": ("jvp", "finite_difference"),
    "meanflow.metric": ("adaptive", "l2", "cauchy"),
    "train.precision": ("fp32", "bf16"),
}

# Config fields -> the backbone's keyword options (ilct.nets.build_backbone). A field whose option
# the chosen model.arch does not take must keep its default (validate says so otherwise).
BACKBONE_OPTIONS: dict[str, str] = {
    "model.num_classes": "num_classes",
    "model.class_dropout": "class_dropout",
    "model.dropout": "dropout",
    "model.text_dim": "text_dim",
    "model.text_tokens": "text_tokens",
    "method.nsln": "nsln",
    "model.mlp_act": "mlp_act",
    "model.qkv_bias": "qkv_bias",
    "model.norm_eps": "norm_eps",
    "model.patch_t": "patch_t",
    "model.attention": "attention",
    "train.bf16_residual": "low_precision_residual",
}

# Settings that may change when a run is resumed (they do not change the maths).
RUNTIME_KEYS = frozenset(
    {
        "train.device",
        "train.compile",
        "train.cuda_graphs",
        "train.fused_optimizer",
        "train.log_every",
        "train.sample_every",
        "train.ckpt_every",
        "train.keep_checkpoints",
        "train.num_sample_images",
        "train.fid_every",
        "train.fid_n",
        "train.fid_features",
        "train.fid_inception_weights",
        "data.cache_dir",
        "data.root",
        "data.latents",
        "autoencoder.path",
    }
)


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    files = resources.files("ilct") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


MAX_YAML_BYTES = 1 << 20  # a config is a few KB; a larger file is not one
MAX_YAML_DEPTH = 8  # a config nests two levels (sections, keys); a deeper document is not one
MAX_BASE_CHAIN = 16  # presets and files named by `base:`, one after another


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing what a config never needs: aliases (`*name`, which a "billion laughs"
    document expands exponentially), nesting deeper than MAX_YAML_DEPTH, and a key given twice in one
    mapping (plain YAML keeps the last silently)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config", mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if twice:
                raise yaml.constructor.ConstructorError(None, None, f"the key {_show(key)} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _show(value: Any, limit: int = 60) -> str:
    """repr of a value for a one-line message, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
        text = f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_yaml(text: str, where: str) -> Any:
    """YAML text through ConfigLoader; any problem is one IlctError line naming `where` and the line."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader: no Python objects
    except yaml.MarkedYAMLError as e:
        line = f", line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        problem = " ".join(str(e.problem or e.context or "malformed").split())
        raise IlctError(f"{where}{line}: not valid YAML ({problem})") from None
    except yaml.YAMLError as e:
        raise IlctError(f"{where}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise IlctError(f"{where}: not valid YAML (nested too deeply)") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise IlctError(f"{where}: not valid YAML ({' '.join(str(e).split())[:120]})") from None


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    data = parse_yaml(text, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IlctError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _is_file(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file()


def _read_source(name_or_path: str) -> tuple[dict[str, Any], Path | None]:
    """The raw dict of a YAML file or preset, and the folder its relative `base:` is taken from (None: a preset)."""
    if _is_file(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise IlctError(f"config file not found: {name_or_path}")
        return _read_yaml(read_text(path, "config file", MAX_YAML_BYTES), str(path)), path.parent
    if name_or_path not in preset_names():
        raise IlctError(
            f"unknown preset '{name_or_path}' (presets: {', '.join(preset_names())}; "
            "or give a path to a .yaml file)"
        )
    text = (resources.files("ilct") / "presets" / f"{name_or_path}.yaml").read_text()
    return _read_yaml(text, f"preset {name_or_path}"), None


def _resolve_base(base: Any, folder: Path | None, where: str) -> str:
    """A `base:` value as a preset name or a path; a relative path is taken from the naming file's folder."""
    if not isinstance(base, str) or not base.strip():
        raise IlctError(f"{where}: base must be a preset name or a path to a .yaml file, got {_show(base)}")
    if folder is None or Path(base).is_absolute():
        return base
    beside = folder / base
    if base.endswith((".yaml", ".yml")) or "/" in base or beside.is_file():
        return str(beside)
    return base  # a preset name


def _raw_preset_or_file(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The nested dict of a preset or YAML file, with `base:` chains merged."""
    key = str(Path(name_or_path).resolve()) if _is_file(name_or_path) else name_or_path
    if key in seen:
        raise IlctError(f"config: circular 'base:' chain {' -> '.join(seen + (key,))}")
    if len(seen) >= MAX_BASE_CHAIN:
        raise IlctError(f"config: 'base:' chain longer than {MAX_BASE_CHAIN} ({' -> '.join(seen[:3])} -> ...)")
    raw, folder = _read_source(name_or_path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = _raw_preset_or_file(_resolve_base(base, folder, name_or_path), seen + (key,))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


# --------------------------------------------------------------------------- validation


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Convert a YAML / command-line value to the field's declared type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return _coerce(value, args[0], name)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise IlctError(f"config: {name} must be true or false, got {_show(value)}")
    if typ is int:
        if isinstance(value, bool):
            raise IlctError(f"config: {name} must be an integer, got {_show(value)}")
        if isinstance(value, int):
            if abs(value) >= 2**63:
                raise IlctError(f"config: {name} is out of range (|value| < 2^63), got {_show(value)}")
            return value
        if isinstance(value, float) and value.is_integer():
            return _coerce(int(value), int, name)
        if isinstance(value, str):
            try:
                return _coerce(int(value.replace("_", "")), int, name)
            except ValueError:
                pass
        raise IlctError(f"config: {name} must be an integer, got {_show(value)}")
    if typ is float:
        if isinstance(value, bool):
            raise IlctError(f"config: {name} must be a number, got {_show(value)}")
        try:
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            raise IlctError(f"config: {name} must be a number, got {_show(value)}") from None
        if not math.isfinite(out):
            raise IlctError(f"config: {name} must be finite, got {_show(value)}")
        return out
    if typ is str:
        return _coerce_str(value, name)
    raise AssertionError(f"unhandled config type {typ} for {name}")


def _coerce_str(value: Any, name: str) -> str:
    """A string field: a scalar as text; no NUL (no path or name holds one) and nothing no UTF-8 file
    can hold (a lone surrogate from a "\\ud800" escape)."""
    if isinstance(value, (dict, list, set, tuple, bytes)):
        raise IlctError(f"config: {name} must be a string, got {_show(value)}")
    text = "" if value is None else str(value)
    if "\x00" in text:
        raise IlctError(f"config: {name} must not hold a NUL character, got {_show(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise IlctError(f"config: {name} holds a lone surrogate (\\ud800-\\udfff), not text: {_show(text)}") from None
    return text


def _section_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from nested dicts (unknown keys are errors)."""
    cfg = Config()
    section_types = _section_types(Config)
    for section, values in raw.items():
        if section not in section_types:
            raise IlctError(f"config: unknown section '{section}' (sections: {', '.join(section_types)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise IlctError(f"config: section '{section}' must be a mapping, got {_show(values)}")
        obj = getattr(cfg, section)
        types = _section_types(type(obj))
        values = {RENAMED.get(f"{section}.{k}", k): v for k, v in values.items()}  # configs of older runs
        for key, value in values.items():
            if key not in types:
                raise IlctError(f"config: unknown key '{section}.{key}' (keys: {', '.join(types)})")
            setattr(obj, key, _coerce(value, types[key], f"{section}.{key}"))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range and cross-field checks; raises IlctError naming the first bad field."""
    from ilct.data import CLIP_DATASETS  # late import: the dataset registry lives with the data
    from ilct.training.optim import LR_DECAYS  # late import: the learning-rate schedule lives with the optimizer

    def need(ok: bool, name: str, msg: str) -> None:
        if not ok:
            value = getattr(getattr(cfg, name.split(".")[0]), name.split(".")[1])
            raise IlctError(f"config: {name} {msg}, got {_show(value)}")

    for name, allowed in CHOICES.items():
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise IlctError(f"config: {name} must be one of {', '.join(allowed)}, got {_show(value)}")

    _validate_arch(cfg)
    cons, m, t, d, me, mf = cfg.consistency, cfg.model, cfg.train, cfg.data, cfg.method, cfg.meanflow
    need(8 <= d.resolution <= MAX_RESOLUTION, "data.resolution", f"must be in 8..{MAX_RESOLUTION}")
    try:
        re.compile(d.caption_holdout)
    except re.error as e:
        raise IlctError(f"config: data.caption_holdout is not a regular expression ({e})") from None
    clips = d.dataset in CLIP_DATASETS
    need(1 <= d.frames <= MAX_FRAMES, "data.frames", f"must be in 1..{MAX_FRAMES}")
    need(1 <= d.frame_stride <= MAX_FRAMES, "data.frame_stride", f"must be in 1..{MAX_FRAMES}")
    need(clips or (d.frames, d.frame_stride) == (8, 1), "data.frames",
         f"and data.frame_stride apply to clip datasets, not {d.dataset}; leave them at 8 and 1")
    need(d.split != "heldout" or d.dataset in ("moving_fmnist", "emoji_clips"), "data.split",
         f"heldout applies to moving_fmnist and emoji_clips, not {d.dataset}")
    need(d.split not in ("fit", "val") or d.dataset == "fashion_mnist", "data.split",
         f"{d.split} applies to fashion_mnist, not {d.dataset}")
    need(m.in_channels is None or 1 <= m.in_channels <= MAX_CHANNELS, "model.in_channels", f"must be in 1..{MAX_CHANNELS}")
    need(m.input_size is None or 1 <= m.input_size <= MAX_RESOLUTION, "model.input_size", f"must be in 1..{MAX_RESOLUTION}")
    need(m.frames is None or 0 <= m.frames <= 4096, "model.frames", "must be in 0..4096 (0: images)")
    need(1 <= m.patch_t <= 64, "model.patch_t", "must be in 1..64")
    need(m.frames is None or max(m.frames, 1) % m.patch_t == 0, "model.patch_t",
         f"must divide the latent frames (model.frames={m.frames}; an image is one frame)")
    need(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    need(-1 <= m.num_classes <= MAX_CLASSES, "model.num_classes", f"must be in 0..{MAX_CLASSES}, or -1 (from the data)")
    need(0.0 <= m.class_dropout < 1.0, "model.class_dropout", "must be in [0, 1)")
    need(0 <= m.text_dim <= MAX_TEXT_DIM, "model.text_dim", f"must be in 0..{MAX_TEXT_DIM} (0 = no text)")
    need(0 <= m.text_tokens <= MAX_TEXT_TOKENS, "model.text_tokens", f"must be in 0..{MAX_TEXT_TOKENS} (0 = pooled only)")
    need(m.text_tokens == 0 or m.text_dim > 0, "model.text_tokens", "needs a text-conditional model (model.text_dim > 0)")
    need(1e-12 <= m.norm_eps <= 1e-1, "model.norm_eps", "must be in [1e-12, 0.1]")
    need(not (m.text_dim > 0 and m.num_classes != 0), "model.text_dim",
         "and model.num_classes are both set: one kind of conditioning, labels or text")
    need(cons.sigma_min > 0, "consistency.sigma_min", "must be > 0")
    need(cons.sigma_min < cons.sigma_max <= 1e6, "consistency.sigma_max", "must be > consistency.sigma_min and <= 1e6")
    need(1e-6 <= cons.sigma_data <= 1e3, "consistency.sigma_data", "must be in [1e-6, 1e3]")
    need(0.1 <= cons.rho <= 1000, "consistency.rho", "must be in [0.1, 1000]")
    need(1 <= cons.s0 <= MAX_LEVELS, "consistency.s0", f"must be in 1..{MAX_LEVELS}")
    need(cons.s0 <= cons.s1 <= MAX_LEVELS, "consistency.s1", f"must be in consistency.s0 ({cons.s0})..{MAX_LEVELS}")
    need(cons.p_std > 0, "consistency.p_std", "must be > 0")
    need(0 < cons.c_scale <= 1e3, "consistency.c_scale", "must be in (0, 1e3]")
    need(0 <= cons.c_floor <= 1e3, "consistency.c_floor", "must be in [0, 1e3]")
    need(abs(cons.p_mean) <= 100 and cons.p_std <= 100, "consistency.p_mean", "and p_std must lie within 100")
    need(0 <= me.lambda_diff <= 1e4, "method.lambda_diff", "must be in [0, 1e4]")
    need(0.0 <= me.diffusion_fraction <= 1.0, "method.diffusion_fraction", "must be in [0, 1]")
    need(abs(mf.p_mean) <= 100, "meanflow.p_mean", "must lie within 100")
    need(0 < mf.p_std <= 100, "meanflow.p_std", "must be in (0, 100]")
    need(0.0 <= mf.equal_fraction <= 1.0, "meanflow.equal_fraction", "must be in [0, 1]")
    need(0 < mf.fd_eps <= 0.1, "meanflow.fd_eps", "must be in (0, 0.1]")
    need(0 <= mf.p <= 10, "meanflow.p", "must be in [0, 10]")
    need(0 < mf.c <= 1e3, "meanflow.c", "must be in (0, 1e3]")
    need(0 < mf.guidance_w <= 100, "meanflow.guidance_w", "must be in (0, 100]")
    need(0 <= mf.guidance_kappa < 1, "meanflow.guidance_kappa", "must be in [0, 1)")
    need(0 < mf.time_scale <= 1e4, "meanflow.time_scale", "must be in (0, 1e4]")
    need(0 < mf.two_step_m < 1, "meanflow.two_step_m", "must be in (0, 1)")
    need(0 <= mf.alpha_start < mf.alpha_end <= 1, "meanflow.alpha_start",
         f"and alpha_end must satisfy 0 <= start < end <= 1, got {mf.alpha_start} and {mf.alpha_end}")
    need(0 < mf.alpha_gamma <= 1000, "meanflow.alpha_gamma", "must be in (0, 1000]")
    need(t.compile or not t.cuda_graphs, "train.cuda_graphs", "needs train.compile=true")
    need(t.precision == "bf16" or not t.bf16_residual, "train.bf16_residual", "needs train.precision=bf16")
    need(1 <= t.total_steps <= MAX_STEPS, "train.total_steps", f"must be in 1..{MAX_STEPS} (9-digit checkpoint names)")
    need(1 <= t.batch_size <= 2**20, "train.batch_size", "must be in 1..2^20")
    need(0 < t.lr <= 10, "train.lr", "must be in (0, 10]")
    need(0 <= t.seed < 2**63, "train.seed", "must be in 0..2^63-1")
    need(0 <= t.weight_decay <= 10, "train.weight_decay", "must be in [0, 10]")
    need(0 < t.adam_eps <= 1, "train.adam_eps", "must be in (0, 1]")
    need(0.0 <= t.beta1 < 1.0, "train.beta1", "must be in [0, 1)")
    need(0.0 <= t.beta2 < 1.0, "train.beta2", "must be in [0, 1)")
    need(0 <= t.warmup_steps <= MAX_STEPS, "train.warmup_steps", f"must be in 0..{MAX_STEPS} (0: no warm-up)")
    need(t.lr_decay in LR_DECAYS, "train.lr_decay", f"must be one of {', '.join(LR_DECAYS)}")
    need(0.0 <= t.lr_final <= 1.0, "train.lr_final", "must be in [0, 1]")
    need(0 <= t.grad_clip <= 1e9, "train.grad_clip", "must be in [0, 1e9] (0 = off)")
    need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")
    need(1 <= t.log_every <= MAX_STEPS, "train.log_every", f"must be in 1..{MAX_STEPS}")
    need(0 <= t.sample_every <= MAX_STEPS, "train.sample_every", f"must be in 0..{MAX_STEPS} (0 = off)")
    need(1 <= t.ckpt_every <= MAX_STEPS, "train.ckpt_every", f"must be in 1..{MAX_STEPS}")
    need(1 <= t.keep_checkpoints <= MAX_STEPS, "train.keep_checkpoints", f"must be in 1..{MAX_STEPS}")
    need(1 <= t.num_sample_images <= MAX_GRID_IMAGES, "train.num_sample_images", f"must be in 1..{MAX_GRID_IMAGES}")
    need(1 <= t.max_nonfinite <= MAX_STEPS, "train.max_nonfinite", f"must be in 1..{MAX_STEPS}")
    need(0 <= t.fid_every <= MAX_STEPS, "train.fid_every", f"must be in 0..{MAX_STEPS} (0 = off)")
    need(10 <= t.fid_n <= 1_000_000, "train.fid_n", "must be in 10..1,000,000")
    need(t.fid_features in ("fmnist", "inception"), "train.fid_features", "must be fmnist or inception")
    need(t.fid_features != "inception" or not t.fid_every or bool(t.fid_inception_weights),
         "train.fid_inception_weights", "must name a TorchScript FID Inception file when fid_features=inception")
    b = cfg.branch
    need(0 <= b.step <= MAX_STEPS, "branch.step", f"must be in 0..{MAX_STEPS}")
    need(bool(b.run) or (b.step, b.changes) == (0, ""), "branch.step",
         "and branch.changes record a branch, so they need branch.run (the source run)")
    dev = t.device
    need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), "train.device",
         "must be auto, cpu, cuda or cuda:N")
    _validate_objective(cfg)


def _validate_objective(cfg: Config) -> None:
    """train.objective is in the registry; a section another objective owns keeps its defaults, as do the
    method.* switches that do not apply to this one; then the objective's own cross-field checks."""
    from ilct.objectives import OBJECTIVES  # late import: the registry lives with the objectives

    name, default = cfg.train.objective, Config()
    if name not in OBJECTIVES:
        raise IlctError(f"config: train.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    chosen = OBJECTIVES[name]
    for owner, cls in OBJECTIVES.items():
        if cls.section and owner != name:
            for key in _section_types(type(getattr(default, cls.section))):
                f = f"{cls.section}.{key}"
                if _field(cfg, f) != _field(default, f):
                    raise IlctError(f"config: {f} applies to train.objective {owner}, not {name}, "
                                    f"got {_field(cfg, f)!r}; leave it at {_field(default, f)!r}")
    if chosen.method_switches is not None:
        for key in _section_types(MethodConfig):
            f = f"method.{key}"
            if key not in chosen.method_switches and _field(cfg, f) != _field(default, f):
                raise IlctError(f"config: {f} does not apply to train.objective {name} (its method switches: "
                                f"{', '.join(chosen.method_switches)}), got {_field(cfg, f)!r}; leave it at {_field(default, f)!r}")
    takes = _backbone_takes(cfg.model.arch)
    for option in chosen.backbone_options():
        if option not in takes:
            raise IlctError(f"config: train.objective {name} needs the backbone option {option!r}, "
                            f"which model.arch {cfg.model.arch} does not take")
    chosen.check_config(cfg)


def _field(cfg: Config, name: str) -> Any:
    section, key = name.split(".")
    return getattr(getattr(cfg, section), key)


def _validate_arch(cfg: Config) -> None:
    """model.arch is in the backbone registry, and options of another backbone keep their defaults."""
    from ilct.nets import ARCHS, backbone_family, backbone_options  # late import: the registry lives with the networks

    arch = cfg.model.arch
    if arch not in ARCHS:
        raise IlctError(f"config: model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    takes, default = backbone_options(arch), Config()
    for name, option in BACKBONE_OPTIONS.items():
        if option not in takes and _field(cfg, name) != _field(default, name):
            raise IlctError(f"config: {name} is not an option of model.arch {arch} (a {backbone_family(arch)}), "
                            f"got {_field(cfg, name)!r}; leave it at {_field(default, name)!r}")


def _backbone_takes(arch: str) -> frozenset[str]:
    from ilct.nets import backbone_options

    return backbone_options(arch)


def backbone_kwargs(cfg: Config) -> dict[str, Any]:
    """The keyword options of cfg's backbone, for ilct.nets.build_backbone (only those it takes), with those
    the objective sets (two time inputs for MeanFlow: `Objective.backbone_options`)."""
    from ilct.objectives import OBJECTIVES

    takes = _backbone_takes(cfg.model.arch)
    options = {option: _field(cfg, name) for name, option in BACKBONE_OPTIONS.items() if option in takes}
    return {**options, **OBJECTIVES[cfg.train.objective].backbone_options()}


# --------------------------------------------------------------------------- public API


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """`["train.lr=3e-4", "method.ot_coupling=true"]` -> nested dict of raw values."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key.count(".") != 1:
            raise IlctError(f"--set expects section.key=value, got {item!r}")
        section, name = key.strip().split(".")
        try:
            parsed = yaml.load(value, Loader=ConfigLoader) if value.strip() else ""
        except (yaml.YAMLError, RecursionError, ValueError):  # not YAML: the text itself
            parsed = value
        out.setdefault(section, {})[name] = parsed
    return out


def merge_raw(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overrides.items():
        current = merged.get(section)
        merged[section] = {**(current if isinstance(current, dict) else {}), **values}
    return merged


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """A preset name or YAML path, plus `--set section.key=value` overrides, validated."""
    raw = merge_raw(_raw_preset_or_file(name_or_path), parse_overrides(overrides))
    return from_dict(raw)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_from_yaml_file(path: str | Path) -> Config:
    return from_dict(_read_yaml(read_text(path, "config file", MAX_YAML_BYTES), str(path)))


def latent_shape(cfg: Config) -> tuple[int, ...]:
    """One sample's latent shape: (C, H, W) for images, (C, T, H, W) for clips of T = model.frames
    latent frames (needs the resolved shape; model.frames None, not taken from the data or a run from
    before clips, counts as images)."""
    m = cfg.model
    if m.in_channels is None or m.input_size is None:
        raise ValueError("latent shape not resolved yet (model.in_channels / model.input_size)")
    return (m.in_channels, *((m.frames,) if m.frames else ()), m.input_size, m.input_size)


def latent_dim(cfg: Config) -> int:
    """D = C * H * W of the model's latents, C * T * H * W for clips (needs the resolved shape)."""
    return math.prod(latent_shape(cfg))
