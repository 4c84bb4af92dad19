"""`ilct clips`: render the first clips of a clip dataset as a PNG strip, an animated GIF and their captions."""

from __future__ import annotations

from pathlib import Path

from ilct.errors import IlctError
from ilct.limits import MAX_COUNT, MAX_FRAMES, MAX_GIF_MS, MAX_RESOLUTION, MAX_SCALE, check_memory, check_ranges

CLIPS_RANGES = {"n": (1, MAX_COUNT), "frames": (1, MAX_FRAMES), "frame_stride": (1, MAX_FRAMES),
                "scale": (1, MAX_SCALE), "duration": (1, MAX_GIF_MS), "resolution": (8, MAX_RESOLUTION)}


def add_parser(sub, fmt) -> None:
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
    k.set_defaults(func=run)


def run(args) -> int:
    # heavy (torch, the datasets): loaded only when this command runs
    import numpy as np

    from ilct.data import CLIP_DATASETS, load_dataset
    from ilct.io.animation import grid_frames, save_clip_strip, save_gif
    from ilct.io.files import write_text
    from ilct.runs.folder import check_out_dir
    from ilct.runs.outputs import check_file_name, check_output

    name, _, root = args.data.partition(":")
    if name not in CLIP_DATASETS:
        raise IlctError(f"--data expects one of {', '.join(CLIP_DATASETS)} (optionally NAME:PATH), got {args.data!r}")
    check_ranges(args, CLIPS_RANGES)
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
