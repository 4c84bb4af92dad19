"""`ilct schedule`: print a config's curriculum stages (N and c), or what its objective schedules instead."""

from __future__ import annotations

import json
import math

from ilct.cli.common import presets
from ilct.errors import IlctError
from ilct.limits import check_ranges


def add_parser(sub, fmt) -> None:
    c = sub.add_parser("schedule", help="print the curriculum stages (N and c) of a config", formatter_class=fmt)
    c.add_argument("--config", required=True, help=f"preset name ({presets()}) or YAML file")
    c.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    c.add_argument("--total-steps", type=int, help="K (default: the config's train.total_steps)")
    c.add_argument("--latent-shape", help="CxHxW (CxTxHxW for clips), when the config leaves it to the data")
    c.add_argument("--json", action="store_true", help="JSON list of {start_step, end_step, N, c}")
    c.set_defaults(func=run)


def _latent_elements(args, cfg) -> int:
    """D, the latent's element count: --latent-shape CxHxW (CxTxHxW), else the config's resolved shape."""
    # heavy (torch): loaded only when this command runs
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


def run(args) -> int:
    # heavy (torch): loaded only when this command runs
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
