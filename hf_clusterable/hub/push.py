"""Push a clustered model folder to the Hub: check everything locally, then upload it in one commit.

A repo whose card promises scores that its files cannot reproduce is worse than no push, so every check that can
fail (repo id, `cluster_config.json`, partitions that fit the weights) runs before the first request. The only local
writes are files the upload needs and the folder lacks: the card, its heatmap, the clusters and the metrics JSON.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..config import ClusterConfig
from ..constants import CLUSTERS_NAME, CONFIG_NAME, METRICS_NAME
from ..modeling.clusters import save_clusters
from ..modeling.loading import load_model
from ..modeling.measure import ClusterReport, measure
from ..utils.io import atomic_write, json_text
from .card import CARD_NAME, write_card


logger = logging.getLogger(__name__)


# What Trainer.push_to_hub leaves out (private files, checkpoints), plus hidden files such as atomic_write's temps.
IGNORE_PATTERNS = ["_*", "checkpoint-*", ".*"]


def prepare_folder(folder: str | os.PathLike, repo_id: str) -> ClusterReport:
    """Check that `folder` is a clustered model ready for `repo_id` and add the files a push needs.

    Raises `ValueError`/`OSError` with a one-line reason, before any upload and before writing anything, if the
    repo id is invalid, `cluster_config.json` is missing or unreadable, the weights do not load, or the saved
    partitions do not fit the weights. Then writes `README.md` (with its heatmap), `clusters.safetensors` and
    `cluster_metrics.json` where missing, from `measure(model, folder)`; existing files are kept as they are.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; give the output_dir of a ClusterableTrainer run.")
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_NAME}, so it is not a clustered model; save it with ClusterableTrainer "
            "(or ClusterConfig.save_pretrained) first."
        )
    config = ClusterConfig.from_pretrained(folder)
    model = load_model(str(folder))
    report = measure(model, folder)  # raises if the saved partitions do not fit the weights
    if not (folder / CARD_NAME).is_file():
        write_card(
            folder,
            model,
            report,
            config,
            model_name=repo_id.split("/")[-1],
            repo_id=repo_id,
            base_model=config.base_model_name_or_path,
        )
    if not (folder / CLUSTERS_NAME).is_file():  # computed by measure: upload them so the card's scores reproduce
        save_clusters(folder, report.partitions)
    if not (folder / METRICS_NAME).is_file():
        atomic_write(folder / METRICS_NAME, json_text(report.to_dict()))
    return report


def check_repo_id(repo_id: str) -> None:
    """Fail in one line, before any request, when `repo_id` cannot name a Hub repo."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"invalid repo id {repo_id!r}: {err}") from err


def commit_message(report: ClusterReport) -> str:
    return f"Upload clustered model (k={report.n_clusters}, mean clusterability {report.mean:.4f})"


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> CommitInfo:
    """Validate a saved clustered model (`prepare_folder`), then push it with its clusters, metrics and card.

    Args:
        folder (`str` or `os.PathLike`): a `ClusterableTrainer` output_dir or `save_model` folder.
        repo_id (`str`): target repo, `name` or `namespace/name`; created if missing.
        private (`bool`, *optional*): visibility of a new repo; no effect on an existing one.
        revision (`str`, *optional*): branch to commit to (created from main if missing).
        create_pr (`bool`, defaults to `False`): open a pull request instead of committing directly.
        token (`str`, *optional*): Hub token; defaults to `HF_TOKEN` or the saved login. Never written anywhere.

    Raises `ValueError`/`OSError` with one line: a bad folder before any request, a Hub or network failure (never
    echoing the token) after.
    """
    report = prepare_folder(folder, repo_id)
    logger.info(
        "pushing %s to %s: k=%d, mean clusterability %.4f vs baseline %.4f",
        folder,
        repo_id,
        report.n_clusters,
        report.mean,
        report.baseline,
    )
    return upload_folder(
        folder,
        repo_id,
        commit_message(report),
        private=private,
        revision=revision,
        create_pr=create_pr,
        token=token,
    )


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    message: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> CommitInfo:
    """Upload a checked folder in one commit (the repo, and the branch `revision`, created if missing); any Hub or
    network failure becomes one `OSError` line that never echoes the token."""
    try:
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            create_pr=create_pr,
            commit_message=message,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except Exception as err:  # HTTP errors and transport failures (refused, dropped, timed out) alike
        raise OSError(f"push to {repo_id} failed: {_one_line(err, token)}") from err


def _one_line(err: BaseException, token: str | None) -> str:
    """First line of an error, never echoing the token (the Hub's messages should not, but be certain)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    if not isinstance(err, HfHubHTTPError):  # network errors say little alone: name them
        line = f"{type(err).__name__}: {line}".rstrip(": ")
    return line.replace(token, "***") if token else line
