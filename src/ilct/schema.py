"""The run configuration's schema: typed dataclasses, one per section, and the pure helpers around them.

The ground floor of ilct: it imports nothing of ilct but the error class. A run is described by one `Config`;
its core sections are the dataclasses below, and each objective with settings of its own registers its section
(`register_section`, done by ilct.objectives), which then loads, dumps and validates like the others.
`from_dict` coerces every value to its field's type; the range and cross-field checks, presets and YAML live in
ilct.config.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from ilct.errors import IlctError


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
    reader: str = "memory"  # how batches read the latents (ilct.training.readers.READERS): memory (random access,
    #                         the whole set in memory or memory-mapped) | stream (shard by shard; docs/streaming.md)
    stream_window: int = 8  # with reader=stream: the shards a draw group holds in memory at once, shuffled together
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
    depth: int = 0  # DiT only: the number of blocks; 0 = the arch's own (DiT-T: 6, S and B: 12, ...), to scan the depth
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
    lr_last_stage: float = 1.0  # the lr's multiplier once N reaches s1 + 1, the last stage (1: the paper; docs/stability.md)


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
class TrainConfig:
    """Optimizer, budget and run-time settings (METHOD.md section 3, Optimizer)."""

    objective: str = "consistency"  # a name from ilct.objectives.OBJECTIVES: consistency | edm (Heun-sampled reference) | meanflow
    init_from: str = ""  # warm start: a run folder (its latest EMA) or an exported model whose backbone weights this run starts from ("" = fresh)
    total_steps: int = 400_000
    batch_size: int = 128
    draw_groups: int = 0  # the global batch is drawn in G groups, each from its own generator (ilct.training.batches):
    #                       a torchrun rank draws only its groups; 0 = the world size at the run's start (recorded)
    lr: float = 1e-4
    warmup_steps: int = 0  # the learning rate ramped linearly over the first W steps (0: none, the paper's; ilct.training.optim)
    lr_decay: str = "none"  # none (the paper's) | linear | cosine: after the warm-up the lr falls towards lr_final (ilct.training.optim)
    lr_final: float = 0.0  # with lr_decay: the lr reached at the end, as a fraction of train.lr
    weight_decay: float = 1e-4
    adam_eps: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    ema: str = "constant"  # constant (ema_decay) | power: EDM2's power-function EMA, its length chosen after training (ilct.training.ema)
    ema_decay: float = 0.9999  # with ema=constant
    ema_stds: list[float] = field(default_factory=lambda: [0.05, 0.10])  # with ema=power: the profiles' sigma_rel; the first is sampled
    ema_snapshot_every: int = 0  # with ema=power: every profile saved into RUN/ema_snapshots/ each N steps and at the end (0 = ckpt_every)
    tensorboard: bool = False  # TensorBoard events (the log's numbers, the sample grids) in RUN/tensorboard/ (pip install 'ilct[tensorboard]')
    precision: str = "fp32"  # fp32 | bf16 (autocast; the loss maths stay fp32)
    bf16_residual: bool = False  # with precision=bf16: the DiT's residual stream in bf16 too, not fp32
    compile: bool = False  # torch.compile each transformer block (ilct.training.accel)
    cuda_graphs: bool = False  # with compile, on CUDA: the whole network with CUDA graphs (mode reduce-overhead)
    fused_optimizer: bool = True  # weights in one flat buffer (ilct.training.flat): RAdam and EMA as a few kernels, one with compile
    sharding: str = "none"  # none (every rank holds the whole model: one process, or DDP under torchrun) | fsdp (each rank
    #                         holds a shard of the weights, the EMA and the moments: FSDP2, ilct.training.sharding)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    log_every: int = 100
    sample_every: int = 5000
    ckpt_every: int = 5000
    keep_checkpoints: int = 3
    async_checkpoint: bool = True  # checkpoints copied to host memory at their step, written by a background thread
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


# The objectives' own settings sections (name -> dataclass), registered by ilct.objectives: a section is read
# and written like the ones above, but the schema does not know which objectives exist.
SECTIONS: dict[str, type] = {}


def register_section(name: str, settings: type) -> None:
    """An objective's settings section `name` (a dataclass of typed fields with defaults)."""
    if name in CORE_SECTIONS or SECTIONS.get(name, settings) is not settings:
        raise ValueError(f"config section {name!r} is taken")
    SECTIONS[name] = settings


@dataclass(eq=False)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)
    sections: dict[str, Any] = field(default_factory=dict, repr=False)  # the objectives' sections (SECTIONS)

    def __getattr__(self, name: str) -> Any:
        """An objective's section (cfg.meanflow): its defaults until the config sets it."""
        if name in SECTIONS:
            sections = self.__dict__.setdefault("sections", {})
            if name not in sections:
                sections[name] = SECTIONS[name]()
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")

    def section_names(self) -> list[str]:
        """The sections in the order a config.yaml lists them: the core ones, the objectives' after method."""
        core = list(CORE_SECTIONS)
        at = core.index("method") + 1
        return core[:at] + list(SECTIONS) + core[at:]

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in self.section_names()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()


CORE_SECTIONS = ("data", "autoencoder", "model", "consistency", "method", "train", "branch")


# Keys renamed since runs were made with them: a config.yaml written then still loads (and resumes).
RENAMED = {"method.diffusion_weight": "lambda_diff"}

MAX_STEPS = 999_999_999  # checkpoint folders are step_XXXXXXXXX
MAX_FRAMES = 1024  # data.frames and data.frame_stride
MAX_DEPTH = 256  # DiT blocks (DiT-XL has 28)
MAX_TEXT_TOKENS = 256  # the sentence encoder's own limit (all-MiniLM-L6-v2: max_seq_length 256)
# Bounds far beyond any use, so that a typo (or a hostile value) is refused here rather than exhausting memory later.
MAX_RESOLUTION = 4096  # data.resolution, model.input_size (sides in pixels / latents)
MAX_CHANNELS = 1024  # model.in_channels (latent channels: 4 for SD, 16 for FLUX, 128 for deep-compression VAEs)
MAX_CLASSES = 100_000  # model.num_classes (ImageNet-21k has 21,841)
MAX_TEXT_DIM = 8192  # model.text_dim (caption embeddings: 384 for all-MiniLM-L6-v2, 4096 for T5-XXL)
MAX_LEVELS = 100_000  # consistency.s0 / s1, discretization steps (the paper's curricula end at 1280)
MAX_GRID_IMAGES = 4096  # train.num_sample_images, kept in memory for each periodic grid
MAX_STREAM_WINDOW = 65536  # data.stream_window, shards held at once (65,536 shards of 8,192 latents: 2^29 latents)
SIGMA_REL_MAX = 1 / math.sqrt(12)  # train.ema_stds: gamma = 0, the plain average of every step (EDM2 takes < 0.289)

# Allowed values of the string fields that are choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("fashion_mnist", "image_folder", "emoji", "moving_fmnist", "emoji_clips", "video_folder"),
    "data.split": ("train", "test", "heldout", "fit", "val"),
    "data.reader": ("memory", "stream"),  # ilct.training.readers.READERS
    "model.mlp_act": ("gelu", "relu"),
    "model.attention": ("full", "factorized"),
    "autoencoder.kind": ("builtin", "taesd", "diffusers"),
    "method.metric": ("cauchy", "cauchy_element", "pseudo_huber", "l2", "geman_mcclure"),
    "train.lr_decay": ("none", "linear", "cosine"),  # ilct.training.optim.LR_DECAYS: the shapes of the decay
    "train.precision": ("fp32", "bf16"),
    "train.ema": ("constant", "power"),  # ilct.training.ema
    "train.sharding": ("none", "fsdp"),  # ilct.training.sharding.SHARDINGS
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
    "model.depth": "depth",
    "train.bf16_residual": "low_precision_residual",
}

# Settings that may change when a run is resumed (they do not change the maths).
RUNTIME_KEYS = frozenset(
    {
        "train.device",
        "train.compile",
        "train.cuda_graphs",
        "train.fused_optimizer",
        "train.sharding",
        "train.log_every",
        "train.sample_every",
        "train.ckpt_every",
        "train.keep_checkpoints",
        "train.async_checkpoint",
        "train.ema_snapshot_every",
        "train.tensorboard",
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


def _show(value: Any, limit: int = 60) -> str:
    """repr of a value for a one-line message, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
        text = f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    if origin is list and typing.get_args(typ) == (float,):  # a list of numbers; one number is a list of one
        items = value if isinstance(value, (list, tuple)) else [value] if isinstance(value, (int, float)) else None
        if items is None:
            raise IlctError(f"config: {name} must be a list of numbers such as [0.05, 0.1], got {_show(value)}")
        return [_coerce(v, float, f"{name}[{i}]") for i, v in enumerate(items)]
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
    """A Config from nested dicts, every value coerced to its field's type (unknown sections and keys are errors);
    range and cross-field checks are ilct.config.validate's."""
    cfg = Config()
    names = cfg.section_names()
    for section, values in raw.items():
        if section not in names:
            raise IlctError(f"config: unknown section '{section}' (sections: {', '.join(names)})")
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
    return cfg


def field_value(cfg: Config, name: str) -> Any:
    """cfg's value of "section.key"."""
    section, key = name.split(".")
    return getattr(getattr(cfg, section), key)


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
