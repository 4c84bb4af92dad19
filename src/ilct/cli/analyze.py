"""`ilct analyze`: latent outlier statistics and box plots (the paper's Figure 1), and a run's TD residuals."""

from __future__ import annotations

from pathlib import Path

from ilct.cli.common import add_allow_other, check_seed, provenance
from ilct.errors import IlctError
from ilct.limits import MAX_COUNT, MAX_LEVELS, check_memory, check_ranges

ANALYZE_RANGES = {"n": (1, MAX_COUNT)}


def add_parser(sub, fmt) -> None:
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
    add_allow_other(z)
    z.add_argument("--device", default="auto")
    z.set_defaults(func=run)


def _print_summary(report: dict) -> None:
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


def run(args) -> int:
    # heavy (torch, matplotlib, the model stack): loaded only when this command runs
    import numpy as np

    from ilct.latents import LatentDir
    from ilct.metrics.outliers import analyze_latents
    from ilct.runs.folder import check_out_dir
    from ilct.runs.opened import open_run, own_checkpoint
    from ilct.runs.outputs import check_file_name, check_output

    check_ranges(args, ANALYZE_RANGES)
    check_seed(args)
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
    check_memory(min(args.n, len(lat)) * 4 * int(np.prod(lat.shape)) * 8,
                 f"--n {args.n} latents of shape {tuple(lat.shape)} and their statistics", "analyze fewer (--n)")
    if args.run and args.checkpoint:
        own_checkpoint(Path(args.run), args.checkpoint, args.allow_other_checkpoint)
    opened = (open_run(args.run, args.checkpoint, args.device, args.allow_other_autoencoder,
                       args.allow_other_checkpoint) if args.run else None)
    report = analyze_latents(lat, args.n, args.seed, out, name, pixels=not args.no_pixels, run=opened,
                             levels=args.levels, made_by=provenance(args))
    _print_summary(report)
    print(f"report: {out / f'{name}.json'}, figure: {out / f'{name}_boxplot.png'}")
    return 0
