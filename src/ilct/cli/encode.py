"""`ilct encode`: encode a dataset into a latent directory (sharded, resumable)."""

from __future__ import annotations

from pathlib import Path

from ilct.cli.common import check_seed, progress
from ilct.errors import IlctError
from ilct.limits import MAX_BATCH, MAX_COUNT, MAX_FRAMES, MAX_RESOLUTION, check_memory, check_ranges

ENCODE_RANGES = {"batch_size": (1, MAX_BATCH), "shard_size": (1, 10**7), "limit": (1, MAX_COUNT),
                 "resolution": (8, MAX_RESOLUTION), "frames": (1, MAX_FRAMES), "frame_stride": (1, MAX_FRAMES),
                 "max_pixels": (1, MAX_COUNT)}


def add_parser(sub, fmt) -> None:
    # Pillow: the limit lives with the decoder, loaded once main's signal handlers are in place
    from ilct.data.folder import MAX_PIXELS

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
    e.set_defaults(func=run)


def _autoencoder_spec(spec: str) -> tuple[str, str]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("builtin", "taesd", "diffusers") or not path:
        raise IlctError(f"--autoencoder expects builtin:DIR, taesd:DIR or diffusers:ID_OR_DIR, got {spec!r}")
    return kind, path


def _data_spec(args) -> dict:
    """ilct.data.load_dataset's arguments; for a clip dataset with its frames and frame stride, for an image
    folder with its pixel limit."""
    # heavy (torch): loaded only when this command runs
    from ilct.data import CLIP_DATASETS, DATASETS
    from ilct.data.folder import MAX_PIXELS

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
    if name == "image_folder":
        spec["max_pixels"] = args.max_pixels
    elif args.max_pixels != MAX_PIXELS:
        raise IlctError(f"--max-pixels applies to image_folder, not {name}")
    return spec


def _check_encode_memory(args) -> None:
    """A batch of pixels (float32, with the encoder's activations at least 8x that) and a shard of latents (at
    least 1/64 of the pixels: the most any supported autoencoder compresses) must fit in memory."""
    pixels = 4 * 3 * args.resolution**2 * args.frames  # float32 RGB, one image or clip
    check_memory(args.batch_size * pixels * 8, f"a batch of {args.batch_size} at --resolution {args.resolution}",
                 "lower --batch-size")
    check_memory(args.shard_size * pixels / 64, f"a shard of {args.shard_size} latents", "lower --shard-size")


def _print_summary(args, out, data) -> None:
    # heavy (torch): loaded only when this command runs
    from ilct.latents.directory import skipped_files

    skipped = skipped_files(out.meta)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): first: {skipped[0][0]} ({skipped[0][1]})")
    unit = "clip" if len(data.shape) == 4 else "image"
    how = "posterior means" if args.posterior == "mean" else f"one posterior sample per {unit}, seed {args.seed}"
    print(f"{out.count} latents of shape {'x'.join(map(str, out.shape))} in {out.path} "
          f"({len(out.meta['shards'])} shard(s); {data.name}; {how})")


def run(args) -> int:
    # heavy (torch, the autoencoders): loaded only when this command runs
    from ilct.autoencoders import load_autoencoder
    from ilct.data import load_dataset
    from ilct.data.clips import subset
    from ilct.latents import check_posterior, encode_to_dir
    from ilct.models import resolve_device
    from ilct.runs.folder import check_out_dir, is_run
    from ilct.training import distributed

    check_ranges(args, ENCODE_RANGES)
    check_seed(args)
    _check_encode_memory(args)
    kind, path = _autoencoder_spec(args.autoencoder)
    spec = _data_spec(args)
    if is_run(check_out_dir(args.out)) or (Path(args.out) / "model.safetensors").is_file():
        raise IlctError(f"--out {args.out} holds a run or an autoencoder: choose a new folder for the latents")
    ae = load_autoencoder(kind, path)
    check_posterior(ae, args.posterior, args.autoencoder)  # before the dataset is read
    data = load_dataset(**spec)
    if args.limit is not None:
        data = subset(data, args.limit)
        spec["limit"] = args.limit
    dist, device = distributed.init(resolve_device(args.device))  # under torchrun: ranks encode disjoint shards
    sync = (lambda phase: distributed.together(dist, phase, "encoding")) if dist.active else None
    clean = False
    try:
        out = encode_to_dir(ae, data, args.out, autoencoder_name=args.autoencoder, data_spec=spec,
                            shard_size=args.shard_size, batch_size=args.batch_size, flip=args.flip,
                            device=device, progress=progress(args) and dist.main, posterior=args.posterior,
                            seed=args.seed, strict=args.strict, rank=dist.rank, world=dist.world, sync=sync)
        clean = True
    finally:
        distributed.shutdown(dist, clean)
    if dist.main:
        _print_summary(args, out, data)
    return 0
