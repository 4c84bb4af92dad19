"""`ilct export`: a run's EMA model as a self-contained folder with its model card (ilct.sharing.export), which
`ilct sample --model`, `ilct.load` and the diffusers pipeline read."""

from __future__ import annotations

from ilct.cli.common import add_allow_other
from ilct.errors import IlctError
from ilct.limits import check_ranges

# sigma_rel of a power-function EMA lies in (0, 1/sqrt(12)): its exponent gamma > 0 (EDM2)
EXPORT_RANGES = {"ema_std": (1e-6, 0.2886)}


def add_parser(sub, fmt) -> None:
    x = sub.add_parser("export", help="a run's EMA model as a folder to share: weights, config, autoencoder, model card",
                       formatter_class=fmt)
    x.add_argument("--run", required=True, help="run directory")
    x.add_argument("--out", required=True, help="the export folder: new or empty (an earlier export only with --force); "
                   "never inside a run, checkpoint, autoencoder or latent directory")
    x.add_argument("--checkpoint", help="a checkpoint directory (default: the run's latest whole one)")
    x.add_argument("--eval", action="append", default=[], metavar="JSON",
                   help="an `ilct eval --json` result of the exported checkpoint, listed in the model card (repeatable); "
                        "without one the card says 'not evaluated'")
    x.add_argument("--ema-std", type=float, help="runs trained with train.ema=power: the EMA of this relative std "
                   "(sigma_rel), reconstructed from the run's snapshots after training (EDM2), instead of the checkpoint's")
    x.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    add_allow_other(x)
    x.set_defaults(func=run)


def run(args) -> int:
    # heavy (torch, the model stack): loaded only when this command runs
    from ilct.sharing.export import export_run

    check_ranges(args, EXPORT_RANGES)
    if args.ema_std is not None and args.checkpoint:
        raise IlctError("--ema-std reconstructs the EMA from all the run's snapshots: it takes no --checkpoint")
    meta = export_run(args.run, args.out, args.checkpoint, args.eval, args.force, args.ema_std,
                      args.allow_other_autoencoder, args.allow_other_checkpoint)
    evaluated = f"{len(args.eval)} evaluation(s)" if args.eval else "not evaluated"
    print(f"exported step {meta['step']} of {args.run} ({meta['source']['checkpoint']}, EMA {meta['ema']['description']}, "
          f"{evaluated}) -> {args.out}")
    return 0
