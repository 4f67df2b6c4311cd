"""`hf-clusterable train --config RECIPE.yaml [--flag value ...]`: every argument goes to the recipe parser
(`hf_clusterable.scripts.train_args`), whose `-h` lists them all."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train from a YAML recipe with the clusterability loss (see -h)",
        add_help=False,
        prefix_chars="\0",  # no option of its own: everything, -h included, reaches the recipe parser
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..scripts.train import main

    return main(args.argv)
