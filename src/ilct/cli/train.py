"""`ilct train`: consistency (or EDM, MeanFlow) training of a run folder: new, resumed or branched."""

from __future__ import annotations

from ilct.cli.common import presets, progress
from ilct.errors import IlctError


def add_parser(sub, fmt) -> None:
    names = presets()
    t = sub.add_parser("train", help="consistency training", formatter_class=fmt,
                       description=f"Presets: {names}. A run directory gets config.yaml, log.jsonl, checkpoints/ and samples/.")
    t.add_argument("--config", help=f"preset name ({names}) or YAML file")
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
    t.set_defaults(func=run)


def _train_config(args):
    """The run's config: --config (a preset or YAML file), the source's with --branch-from, the run's own with
    --resume; --set and the shortcuts on top."""
    # heavy (torch): loaded only when this command runs
    from ilct.config import load_config
    from ilct.runs.folder import saved_config
    from ilct.training.branch import branch_config

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
        return branch_config(args.branch_from, overrides)  # checked against the checkpoint again in train
    if args.config is None:
        if not args.resume:
            raise IlctError("--config is required unless --resume is given")
        return saved_config(args.out, overrides)  # checked against the run again by resume_config
    return load_config(args.config, overrides)


def run(args) -> int:
    # heavy (the whole training stack): loaded only when this command runs
    from ilct.training.loop import train

    if args.resume and args.force:
        raise IlctError("--resume and --force exclude each other")
    cfg = _train_config(args)
    result = train(cfg, args.out, resume=args.resume, force=args.force, progress=progress(args),
                   allow_other_autoencoder=args.allow_other_autoencoder, allow_other_latents=args.allow_other_latents,
                   branch_from=args.branch_from)
    print(f"trained to step {result.step} in {result.seconds:.0f} s (last logged loss {result.last_loss:.4g}); "
          f"run directory: {result.run_dir}")
    return 0
