"""`hf-clusterable push DIR REPO_ID`: check a saved clustered model, then push it with its clusters and card."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("push", help="push a clustered model folder with its clusters, metrics and model card")
    p.add_argument("folder", help="output_dir of a ClusterableTrainer run (must hold cluster_config.json)")
    p.add_argument("repo_id", help="Hub repo, 'name' or 'namespace/name' (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (no effect if it exists)")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..examples.models import register_auto_classes
    from ..hub.push import push_folder

    register_auto_classes()  # a ClusterNet checkpoint (the paper's example networks) loads like any other model
    info = push_folder(
        args.folder,
        args.repo_id,
        private=True if args.private else None,
        revision=args.revision,
        create_pr=args.create_pr,
        token=args.token,
    )
    print(info.pr_url or info.repo_url)
    return 0
