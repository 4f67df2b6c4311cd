"""`hf-clusterable demo`: the paper's modular-addition run, offline, in a few minutes on a laptop CPU."""

from __future__ import annotations

import argparse

from .flags import parameter_flags


# run_demo's parameters that are ordinary words, and its one `name=value` hint (see flags.py)
ALIASES = {"seed": "--seed", "threads": "--threads", "overwrite=True": "--overwrite"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train the paper's modular-addition transformer with the clusterability loss (offline, a few minutes)",
        description="Train the paper's 1-layer transformer on (a + b) mod 113 from scratch with the clusterability "
        "loss (and a lambda = 0 reference), then save the model, its clusters, a model card and a block heatmap.",
    )
    p.add_argument("--output-dir", default="modular-addition-demo", help="where to save (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --output-dir")
    p.add_argument("--loss-weight", type=float, default=20.0, help="lambda (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and weights (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=5000, help="optimizer steps per run (default: %(default)s)")
    p.add_argument("--no-reference", dest="reference", action="store_false", help="skip the lambda = 0 run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.set_defaults(func=run, flags=parameter_flags(p, ALIASES))


def run(args: argparse.Namespace) -> int:
    from ..examples.demo import run_demo

    # the options' destinations are run_demo's parameter names
    options = {k: v for k, v in vars(args).items() if k not in ("command", "func", "flags")}
    run_demo(**options)
    return 0
