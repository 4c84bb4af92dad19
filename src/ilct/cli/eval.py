"""`ilct eval`: FID and precision/recall of a run's EMA samples at one or more step counts."""

from __future__ import annotations

import json
from pathlib import Path

from ilct.cli.common import add_allow_other, check_seed, parse_floats, progress, provenance, run_inputs
from ilct.cli.sample import check_sample_memory
from ilct.errors import IlctError
from ilct.limits import MAX_BATCH, MAX_COUNT, MAX_SAMPLING_STEPS, check_ranges

EVAL_RANGES = {"n": (10, MAX_COUNT), "batch_size": (1, MAX_BATCH), "ref_n": (0, MAX_COUNT)}


def add_parser(sub, fmt) -> None:
    v = sub.add_parser("eval", help="FID and precision/recall of a run's EMA samples", formatter_class=fmt,
                       description="Default features: a Fashion-MNIST classifier trained here (FID in its features, "
                                   "not Inception FID). --features inception needs a local TorchScript file.")
    v.add_argument("--run", required=True)
    v.add_argument("--checkpoint", help="a checkpoint directory (default: the run's latest)")
    v.add_argument("--steps", default="1,2", help="comma-separated step counts")
    v.add_argument("--tau", help="comma-separated intermediate sigmas for 2-step sampling, one result each, e.g. "
                   "0.5,1.0,1.382 (default: the authors' 1.382, which the demo sweep also chose for the fmnist "
                   "presets; docs/stability.md)")
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
    add_allow_other(v)
    v.add_argument("--device", default="auto")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=run)


def _eval_steps(text: str) -> list[int]:
    try:
        steps = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise IlctError(f"--steps expects comma-separated integers, got {text!r}") from None
    if not steps or min(steps) < 1 or max(steps) > MAX_SAMPLING_STEPS:
        raise IlctError(f"--steps needs step counts in 1..{MAX_SAMPLING_STEPS}, got {text!r}")
    return steps


def run(args) -> int:
    # heavy (torch, the feature networks): loaded only when this command runs
    from ilct.io.files import write_text
    from ilct.metrics.evaluate import evaluate_run
    from ilct.runs.opened import own_checkpoint, run_config
    from ilct.runs.outputs import check_output

    check_ranges(args, EVAL_RANGES)
    steps = _eval_steps(args.steps)
    check_seed(args)
    taus = parse_floats(args.tau, "--tau")
    cfg = run_config(args.run)
    if args.checkpoint:
        own_checkpoint(Path(args.run), args.checkpoint, args.allow_other_checkpoint)
    if args.json:
        check_output(args.json, (".json",), "--json", run_inputs(args.run, cfg))
    check_sample_memory(cfg, args.n, args.batch_size, 0)
    result = evaluate_run(args.run, steps, args.n, args.seed, args.features, args.inception_weights,
                          Path(args.cache_dir) if args.cache_dir else None, args.batch_size, args.device, progress(args),
                          args.checkpoint, taus=taus, ref_n=args.ref_n, split=args.split,
                          allow_other_autoencoder=args.allow_other_autoencoder,
                          allow_other_checkpoint=args.allow_other_checkpoint)
    print(f"features: {result['features']}")
    print(f"reference: {result['reference']}, {args.split} split")
    for row in result["rows"]:
        how = f"{row['steps']} step(s)" + (f", tau {row['tau']:g}" if row["tau"] is not None else "")
        print(f"{how}: FID {row['fid']:.3f}  precision {row['precision']:.3f}  recall {row['recall']:.3f}  (n = {args.n})")
    if args.json:
        write_text(args.json, json.dumps({**provenance(args), **result}, indent=2))
        print(f"written to {args.json}")
    return 0
