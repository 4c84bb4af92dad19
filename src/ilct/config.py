"""Loading a run configuration: presets, YAML files, `--set` overrides, and the range and cross-field checks.

The typed sections themselves are ilct.schema's (re-exported here); each objective's own section and its checks
are the objective's (ilct.objectives). Presets live in `ilct/presets/*.yaml`; a preset may name a `base:`
preset and override only what differs, so the `ict` and `ilct` presets differ exactly in the `method:` section
(the paper's five techniques, METHOD.md section 4). Every value is checked when loaded; an invalid one raises
`IlctError` naming the field.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ilct import schema
from ilct.data import CLIP_DATASETS
from ilct.errors import IlctError
from ilct.io.files import read_text
from ilct.nets import ARCHS, backbone_family, backbone_options
from ilct.objectives import OBJECTIVES
from ilct.schema import (BACKBONE_OPTIONS, CHOICES, MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH, MAX_FRAMES, MAX_GRID_IMAGES,  # noqa: F401
                         MAX_LEVELS, MAX_RESOLUTION, MAX_STEPS, MAX_STREAM_WINDOW, MAX_TEXT_DIM, MAX_TEXT_TOKENS, RUNTIME_KEYS, SIGMA_REL_MAX,
                         AutoencoderConfig, BranchConfig, Config, ConsistencyConfig, DataConfig, MethodConfig,
                         ModelConfig, TrainConfig, _section_types, _show, field_value, latent_dim, latent_shape)

_field = field_value

__all__ = ["AutoencoderConfig", "BranchConfig", "CHOICES", "Config", "ConsistencyConfig", "DataConfig", "MAX_STEPS",
           "MethodConfig", "ModelConfig", "RUNTIME_KEYS", "TrainConfig", "backbone_kwargs", "config_from_yaml_file",
           "dump_config", "from_dict", "latent_dim", "latent_shape", "load_config", "merge_raw", "parse_overrides",
           "preset_names", "validate"]  # the schema's names re-exported: `from ilct.config import Config` keeps working


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


def validate(cfg: Config) -> None:
    """Range and cross-field checks; raises IlctError naming the first bad field."""
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
    _validate_reader(cfg)
    cons, m, t, d, me = cfg.consistency, cfg.model, cfg.train, cfg.data, cfg.method
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
    need(0 <= m.depth <= MAX_DEPTH, "model.depth", f"must be in 0..{MAX_DEPTH} (0: the arch's own)")
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
    need(0 < cons.lr_last_stage <= 1, "consistency.lr_last_stage", "must be in (0, 1] (1: the paper's constant lr)")
    need(abs(cons.p_mean) <= 100 and cons.p_std <= 100, "consistency.p_mean", "and p_std must lie within 100")
    need(0 <= me.lambda_diff <= 1e4, "method.lambda_diff", "must be in [0, 1e4]")
    need(0.0 <= me.diffusion_fraction <= 1.0, "method.diffusion_fraction", "must be in [0, 1]")
    need(t.compile or not t.cuda_graphs, "train.cuda_graphs", "needs train.compile=true")
    need(t.sharding == "none" or not t.compile, "train.compile",
         f"is not supported with train.sharding={t.sharding} (compiled blocks under FSDP2 are untested): set it to false")
    need(t.precision == "bf16" or not t.bf16_residual, "train.bf16_residual", "needs train.precision=bf16")
    need(1 <= t.total_steps <= MAX_STEPS, "train.total_steps", f"must be in 1..{MAX_STEPS} (9-digit checkpoint names)")
    need(1 <= t.batch_size <= 2**20, "train.batch_size", "must be in 1..2^20")
    need(t.draw_groups == 0 or (1 <= t.draw_groups <= t.batch_size and t.batch_size % t.draw_groups == 0),
         "train.draw_groups", f"must be 0 (the world size) or divide train.batch_size={t.batch_size}")
    need(0 < t.lr <= 10, "train.lr", "must be in (0, 10]")
    need(0 <= t.seed < 2**63, "train.seed", "must be in 0..2^63-1")
    need(0 <= t.weight_decay <= 10, "train.weight_decay", "must be in [0, 10]")
    need(0 < t.adam_eps <= 1, "train.adam_eps", "must be in (0, 1]")
    need(0.0 <= t.beta1 < 1.0, "train.beta1", "must be in [0, 1)")
    need(0.0 <= t.beta2 < 1.0, "train.beta2", "must be in [0, 1)")
    need(0 <= t.warmup_steps <= MAX_STEPS, "train.warmup_steps", f"must be in 0..{MAX_STEPS} (0: no warm-up)")
    need(0.0 <= t.lr_final <= 1.0, "train.lr_final", "must be in [0, 1]")
    need(0 <= t.grad_clip <= 1e9, "train.grad_clip", "must be in [0, 1e9] (0 = off)")
    need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")
    _validate_power_ema(t)
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


def _validate_reader(cfg: Config) -> None:
    """data.reader and data.stream_window (ilct.training.readers): the stream reads a latent directory shard by
    shard, so it needs one (data.latents), and a class count found by reading every label stays with memory."""
    d, m = cfg.data, cfg.model
    if d.reader != "stream":
        if d.stream_window != DataConfig().stream_window:
            raise IlctError(f"config: data.stream_window applies to data.reader=stream, not {d.reader}, "
                            f"got {_show(d.stream_window)}; leave it at {DataConfig().stream_window}")
        return
    if not 1 <= d.stream_window <= MAX_STREAM_WINDOW:
        raise IlctError(f"config: data.stream_window must be in 1..{MAX_STREAM_WINDOW} (shards held at once), "
                        f"got {_show(d.stream_window)}")
    if not d.latents:
        raise IlctError("config: data.reader=stream reads a latent directory shard by shard: set data.latents "
                        "(make one with `ilct encode`; docs/streaming.md)")
    if m.num_classes == -1:
        raise IlctError("config: model.num_classes=-1 reads every label before training; with data.reader=stream "
                        "give the number of classes")


MAX_EMA_PROFILES = 16  # train.ema_stds: each profile is one more copy of the weights in memory


def _validate_power_ema(t: TrainConfig) -> None:
    """train.ema_stds and train.ema_snapshot_every (ilct.training.ema): 1..16 distinct relative stds, each in
    (0, 1/sqrt(12)]; they keep their defaults under train.ema=constant, which does not use them."""
    stds, default = t.ema_stds, TrainConfig()
    if t.ema != "power":
        for key in ("ema_stds", "ema_snapshot_every"):
            if getattr(t, key) != getattr(default, key):
                raise IlctError(f"config: train.{key} applies to train.ema=power, not {t.ema}, "
                                f"got {_show(getattr(t, key))}; leave it at {_show(getattr(default, key))}")
    if not 1 <= len(stds) <= MAX_EMA_PROFILES:
        raise IlctError(f"config: train.ema_stds must list 1..{MAX_EMA_PROFILES} relative stds (the EMA profiles "
                        f"tracked), got {_show(stds)}")
    bad = [s for s in stds if not 0 < s <= SIGMA_REL_MAX]
    if bad:
        raise IlctError(f"config: train.ema_stds must each be in (0, 1/sqrt(12) = {SIGMA_REL_MAX:.6f}] (a power-function "
                        f"EMA's relative std; 1/sqrt(12) is the plain average of every step), got {_show(stds)}")
    if len(set(stds)) != len(stds):
        raise IlctError(f"config: train.ema_stds must not repeat a value, got {_show(stds)}")
    if not 0 <= t.ema_snapshot_every <= MAX_STEPS:
        raise IlctError(f"config: train.ema_snapshot_every must be in 0..{MAX_STEPS} (0 = every train.ckpt_every), "
                        f"got {_show(t.ema_snapshot_every)}")


def from_dict(raw: dict[str, Any]) -> Config:
    """A validated Config from nested dicts (unknown sections and keys are errors)."""
    cfg = schema.from_dict(raw)
    validate(cfg)
    return cfg


def _validate_objective(cfg: Config) -> None:
    """train.objective is in the registry; a section another objective owns keeps its defaults, as do the
    method.* switches that do not apply to this one; then the objective's own cross-field checks."""
    name, default = cfg.train.objective, Config()
    if name not in OBJECTIVES:
        raise IlctError(f"config: train.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    chosen = OBJECTIVES[name]
    for cls in OBJECTIVES.values():  # each objective's own section: its choices and ranges
        if cls.settings is not None:
            cls.check_settings(getattr(cfg, cls.section))
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


def _validate_arch(cfg: Config) -> None:
    """model.arch is in the backbone registry, and options of another backbone keep their defaults."""
    arch = cfg.model.arch
    if arch not in ARCHS:
        raise IlctError(f"config: model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    takes, default = backbone_options(arch), Config()
    for name, option in BACKBONE_OPTIONS.items():
        if option not in takes and _field(cfg, name) != _field(default, name):
            raise IlctError(f"config: {name} is not an option of model.arch {arch} (a {backbone_family(arch)}), "
                            f"got {_field(cfg, name)!r}; leave it at {_field(default, name)!r}")


def _backbone_takes(arch: str) -> frozenset[str]:
    return backbone_options(arch)


def backbone_kwargs(cfg: Config) -> dict[str, Any]:
    """The keyword options of cfg's backbone, for ilct.nets.build_backbone (only those it takes), with those
    the objective sets (two time inputs for MeanFlow: `Objective.backbone_options`)."""
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



