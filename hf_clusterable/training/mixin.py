"""`ClusterabilityMixin`: the clusterability loss, its metrics and files, for any `transformers.Trainer` subclass.

`class MyTrainer(ClusterabilityMixin, SFTTrainer)` trains with `task_loss + loss_weight * (1 - mean C)` over the
policy's target matrices, whatever the host trainer computes as its task loss. Everything else stays the host's:
data, optimiser, gradient accumulation, mixed precision, PEFT, its own metrics and model card hooks.

The mixin keeps its state under names no trainer uses (`_cluster_metrics`, `cluster_targets`, ...), so it never
collides with a host's own bookkeeping (TRL keeps floats in `self._metrics`). Targets are resolved from
`self.model` once the host has built it, so a model given as a string (TRL loads it) works; a model given as an
instance is checked before the host does anything, so a bad target pattern fails fast. Only `self.model` is
regularised and scored: a reference model (DPO) is never hooked.

The regulariser is added once per optimizer step (on the micro-batch that syncs gradients), scaled so its effective
weight does not depend on gradient accumulation or world size. Partitions are computed once (or on a schedule),
broadcast from the main process, saved with every checkpoint and restored exactly on resume.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import defaultdict
from typing import Any

import torch
from accelerate.utils import broadcast
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import HubStrategy

from ..config import ClusterConfig
from ..constants import CLUSTERS_NAME, CONFIG_NAME, METRICS_NAME
from ..core.partition import Partition
from ..hub.card import write_card
from ..modeling.clusters import check_clusters, cluster_model, load_clusters, save_clusters
from ..modeling.distributed import is_sharded
from ..modeling.measure import ClusterReport, gather_weights, score_matrices, score_weights
from ..modeling.plot import panel_names, panel_weights
from ..modeling.targets import Target, base_model, find_targets, modules_by_name
from ..utils.io import atomic_write, json_text
from .checkpoints import HubToken, holds_checkpoints, last_complete_checkpoint
from .distill import Teacher, distillation_loss
from .loss import ClusterabilityLoss
from .projection import ProjectionCallback, Projector, check_projectable
from .schedules import loss_weight_at
from .trackers import TRACKERS, active_trackers, send_report


class ClusterabilityMixin:
    """Adds `loss_weight * (1 - mean C)` over the model's target matrices to any `transformers.Trainer` subclass.

    Put it first: `class MyTrainer(ClusterabilityMixin, SFTTrainer)`.

    Args:
        cluster_config (`ClusterConfig`, *optional*): what to cluster and how hard; defaults to `ClusterConfig()`
            (k = 4, spectral co-clustering of the model type's MLP matrices before the first step, lambda = 20).
        partitions (`dict[str, Partition]`, *optional*): partitions made by hand (module name -> `Partition`, for
            every target matrix), used instead of computing them; checked against the targets and `n_clusters`.
        All other arguments are the host trainer's.

    Logged metrics (train and `eval_`), next to the host's own: `task_loss`, `cluster_loss` (the regulariser),
    `clusterability` (mean C) and `clusterability_baseline` (what unstructured weights would score with these
    cluster sizes); in training also `cluster_loss_weight` (lambda at that step, see `loss_weight_schedule`) and,
    with `distill_weight > 0`, `distill_loss` (the KL to the frozen starting model).

    Every save writes `cluster_config.json`, `clusters.safetensors` and `cluster_metrics.json` beside the weights;
    `push_to_hub()` and every `hub_strategy` push upload them with a model card holding the current scores.
    """

    _cluster_tag_names = ["hf_clusterable", "clusterability"]

    def __init__(
        self,
        *args: Any,
        cluster_config: ClusterConfig | None = None,
        partitions: dict[str, Partition] | None = None,
        **kwargs: Any,
    ):
        model = kwargs["model"] if "model" in kwargs else (args[0] if args else None)
        if model is None:
            raise ValueError(f"{type(self).__name__} needs a model (model_init is not supported).")
        config = dataclasses.replace(cluster_config) if cluster_config is not None else ClusterConfig()
        if isinstance(model, nn.Module):  # check targets and partitions before the host trainer does anything
            targets = self._resolve_targets(model, config)
            if partitions is not None:
                check_clusters(partitions, targets, config.n_clusters)
        super().__init__(*args, **kwargs)
        self.cluster_config = config
        self.cluster_targets: list[Target] = self._resolve_targets(self.model, config)
        inner = base_model(self.model)
        hf_config = getattr(inner, "config", None)
        config.model_type = getattr(hf_config, "model_type", None)
        config.base_model_name_or_path = getattr(hf_config, "_name_or_path", None) or None
        self.partitions: dict[str, Partition] | None = None
        self._cluster_loss: ClusterabilityLoss | None = None
        self._clustered_at: int | None = None
        self._cluster_metrics: dict[str, defaultdict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._step_task_loss: torch.Tensor | float = 0.0
        self._step_distill_loss: torch.Tensor | float = 0.0
        self._cluster_projector_cache: Projector | None = None
        self._snapshot: tuple[ClusterReport, dict[str, torch.Tensor]] | None = None
        self._snapshot_key: tuple[int, int] | None = None  # (step, partitions) the snapshot belongs to
        self._tracked_step: int | None = None
        if isinstance(inner, PreTrainedModel):
            inner.add_model_tags(self._cluster_tag_names)
        if partitions is not None:
            check_clusters(partitions, self.cluster_targets, config.n_clusters)
            self._set_partitions(dict(partitions))
        elif config.init == "blocks":
            self._set_partitions(cluster_model(self.model, config, self.cluster_targets))
        # The starting model, frozen, for self-distillation; the final projection, run after every step once due.
        dtype = getattr(torch, config.teacher_dtype) if config.teacher_dtype else None
        self._cluster_teacher = Teacher(self.model, dtype) if config.distill_weight > 0 else None
        if config.project_step is not None:
            check = lambda: check_projectable(self.model, self.cluster_targets)  # noqa: E731
            self.add_callback(ProjectionCallback(config.project_step, self._cluster_projector, check))

    @staticmethod
    def _resolve_targets(model: nn.Module, config: ClusterConfig) -> list[Target]:
        return find_targets(model, config.targets, coupled=config.coupled, n_clusters=config.n_clusters)

    # ---- partitions -------------------------------------------------------------------------------------------

    def _set_partitions(self, partitions: dict[str, Partition]) -> None:
        """Adopt partitions, identical on every process (the main process's labels win)."""
        if self.accelerator.num_processes > 1:
            device = self.accelerator.device
            partitions = {
                name: Partition(
                    broadcast(p.row_labels.to(device)).cpu(), broadcast(p.col_labels.to(device)).cpu(), p.n_clusters
                )
                for name, p in partitions.items()
            }
        self.partitions = partitions
        self._cluster_loss = None  # rebuilt lazily on the device the weights live on
        self._cluster_projector_cache = None

    def _maybe_cluster(self) -> bool:
        """Compute spectral partitions when they are due; True once partitions exist."""
        cfg, step = self.cluster_config, self.state.global_step
        if cfg.init == "spectral" and step >= cfg.cluster_step and step != self._clustered_at:
            due = self.partitions is None
            since = step - cfg.cluster_step
            due |= cfg.recluster_every > 0 and since > 0 and since % cfg.recluster_every == 0
            if due:
                self._set_partitions(cluster_model(self.model, cfg, self.cluster_targets))
                self._clustered_at = step
        return self.partitions is not None

    def _cluster_projector(self) -> Projector | None:
        if self._cluster_projector_cache is None and self._maybe_cluster():
            self._cluster_projector_cache = Projector(self.model, self.cluster_targets, self.partitions)
        return self._cluster_projector_cache

    def _loss_fn(self) -> ClusterabilityLoss:
        if self._cluster_loss is None:
            self._cluster_loss = ClusterabilityLoss(self.model, self.cluster_targets, self.partitions)
        return self._cluster_loss

    # ---- loss ---------------------------------------------------------------------------------------------------

    def _loss_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        """The Trainer's own rule (transformers >= 5.19 exposes it as an attribute) for dividing the loss by GA."""
        flag = getattr(self, "loss_is_scaled_for_ga", None)  # absent before transformers 5.19
        if flag is not None:
            return flag
        return (
            self.model_accepts_loss_kwargs and num_items_in_batch is not None
        ) or self.compute_loss_func is not None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The regulariser enters once per optimizer step, on the micro-batch that syncs gradients.
        regularise = model.training and self.accelerator.sync_gradients and self._maybe_cluster()
        weight = loss_weight_at(self.cluster_config, self.state.global_step)
        teacher_logits = None
        if model.training and self._cluster_teacher is not None:
            teacher_logits = self._cluster_teacher.to(self.accelerator.device).logits(inputs)
        # `return_outputs` is passed through (TRL's trainers run an extra forward pass to build outputs on request);
        # distillation needs the student's logits, so it asks for them.
        want_outputs = return_outputs or teacher_logits is not None
        if regularise and weight > 0:
            with self._loss_fn().capture():  # masses computed inside each target's forward, see loss.py
                result = super().compute_loss(model, inputs, want_outputs, num_items_in_batch)
        else:
            result = super().compute_loss(model, inputs, want_outputs, num_items_in_batch)
        if not model.training:  # evaluation and prediction: the task loss alone
            return result
        loss, outputs = result if want_outputs else (result, None)
        # Trainer divides by the accumulation steps unless the loss is already scaled: undo that for R, so R enters
        # each optimizer step exactly once with weight lambda.
        scaled = self._loss_is_scaled_for_ga(num_items_in_batch)
        ga_scale = 1 if scaled else self.current_gradient_accumulation_steps
        self._step_task_loss = self._step_task_loss + loss.detach() / ga_scale
        if teacher_logits is not None:  # normalised like the task loss: per token of the step, or of this batch
            kl = distillation_loss(
                outputs.logits, teacher_logits, inputs.get("labels"), self.cluster_config.distill_temperature,
                num_items_in_batch if scaled else None,
            )  # fmt: skip
            if scaled and num_items_in_batch is not None and self.args.average_tokens_across_devices:
                kl = kl * self.accelerator.num_processes
            loss = loss + self.cluster_config.distill_weight * kl
            self._step_distill_loss = self._step_distill_loss + kl.detach() / ga_scale
        if self.accelerator.sync_gradients:
            metrics = self._cluster_metrics["train"]
            metrics["task_loss"].append(torch.as_tensor(self._step_task_loss, dtype=torch.float32))
            self._step_task_loss = 0.0
            metrics["cluster_loss_weight"].append(torch.tensor(weight, dtype=torch.float32))
            if teacher_logits is not None:
                metrics["distill_loss"].append(torch.as_tensor(self._step_distill_loss, dtype=torch.float32))
                self._step_distill_loss = 0.0
            if regularise:
                with torch.set_grad_enabled(weight > 0):
                    mean_c = self._loss_fn()()
                    reg = weight * (1.0 - mean_c)
                if weight > 0:
                    loss = loss + reg * ga_scale  # promotes a bf16 task loss to fp32
                metrics["cluster_loss"].append(reg.detach().float())
                metrics["clusterability"].append(mean_c.detach().float())
                metrics["clusterability_baseline"].append(torch.tensor(self._loss_fn().baseline))
        return (loss, outputs) if return_outputs else loss

    # ---- logging ------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if mode == "eval" and any(k.startswith("eval_") for k in logs) and self._maybe_cluster():
            with torch.no_grad():
                metrics = self._cluster_metrics["eval"]
                metrics["clusterability"].append(self._loss_fn()().float())
                metrics["clusterability_baseline"].append(torch.tensor(self._loss_fn().baseline))
        device = self.accelerator.device
        averaged = {}
        for key, values in self._cluster_metrics[mode].items():
            value = torch.stack([v.to(device) for v in values]).mean()
            if self.accelerator.num_processes > 1:
                value = self.accelerator.reduce(value, reduction="mean")
            averaged[key if mode == "train" else f"eval_{key}"] = round(float(value), 6)
        logs.update(averaged)
        super().log(logs, start_time)
        self._cluster_metrics[mode].clear()
        if mode == "eval" and any(k.startswith("eval_") for k in logs):
            self._send_to_trackers()

    def _send_to_trackers(self) -> None:
        """Per-matrix scores and the block heatmap to TensorBoard / W&B, once per step (evaluations and saves).

        Decided from `args.report_to`, the same on every process, since sharded weights are gathered by all.
        """
        step = self.state.global_step
        report_to = self.args.report_to or []
        if self.partitions is None or self._tracked_step == step or not any(t in report_to for t in TRACKERS):
            return
        self._tracked_step = step
        self._take_snapshot()  # a collective for sharded weights
        trackers = active_trackers(self.callback_handler.callbacks) if self.is_world_process_zero() else {}
        if not trackers:
            return
        report, weights = self._saved_report()
        if report is not None:
            panels = weights if weights is not None else panel_weights(self.model, self.partitions)
            send_report(trackers, report, panels, step)

    # ---- saving and resuming ------------------------------------------------------------------------------------

    def cluster_report(self) -> ClusterReport | None:
        """Current scores of every target matrix (no gradient), clustering first if no clusters exist yet.

        Call it on every process: computing clusters broadcasts them. None while a warm-up (`cluster_step`) runs.
        """
        if self.partitions is None:
            self._maybe_cluster()
        return self._scores()

    def _scores(self) -> ClusterReport | None:
        """Scores under the partitions in use; never clusters. Gathers sharded weights: call on every process."""
        if self.partitions is None:
            return None
        rows = score_matrices(self.model, self.cluster_targets, self.partitions)
        return ClusterReport(rows, self.cluster_config.n_clusters, self.partitions)

    def _sharded(self) -> bool:
        modules = modules_by_name(self.model)
        return any(is_sharded(modules[t.name]) for t in self.cluster_targets)

    def _take_snapshot(self) -> None:
        """Score (and draw) the weights about to be saved, before anything is written to the save folder.

        Sharded weights (ZeRO-3, FSDP2) can only be gathered by all processes together, while the cluster files and
        the model card are written by the main process alone; so the gather happens here, once per step, on every
        process. Unsharded weights are scored here by the main process. Either way the scores exist before the
        weights are written, so weights that cannot be scored (NaN) stop the save before it starts.
        """
        step = self.state.global_step
        if self.partitions is None or self._snapshot_key == (step, id(self.partitions)):
            return
        if self._sharded():
            weights = gather_weights(self.model, self.cluster_targets)  # a collective: every process takes part
            if not self.args.should_save:
                return
            rows = score_weights(weights, self.cluster_targets, self.partitions)
            panels = {name: weights[name] for name in panel_names(self.partitions)}  # what the card's heatmap draws
            snapshot = (ClusterReport(rows, self.cluster_config.n_clusters, self.partitions), panels)
        elif self.args.should_save:
            snapshot = (self._scores(), None)
        else:
            return
        self._snapshot, self._snapshot_key = snapshot, (step, id(self.partitions))

    def _saved_report(self) -> tuple[ClusterReport | None, dict[str, torch.Tensor] | None]:
        """(scores, gathered weights for the heatmap or None) for main-process-only writes; never communicates."""
        if self.partitions is None:
            return None, None
        if self._snapshot_key == (self.state.global_step, id(self.partitions)):
            return self._snapshot
        if self._sharded():
            return None, None
        return self._scores(), None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not _internal_call:  # a user's call may follow edits to the weights within a step
            self._snapshot_key = None
        self._take_snapshot()  # scores first: weights that cannot be scored stop the save before anything is written
        super().save_model(output_dir, _internal_call)

    def save_cluster_files(self, output_dir: str) -> None:
        """Write `cluster_config.json`, `clusters.safetensors` and `cluster_metrics.json` (main process only)."""
        if not self.args.should_save:
            return
        report, _ = self._saved_report()
        self.cluster_config.save_pretrained(output_dir)
        if report is not None:
            save_clusters(output_dir, self.partitions)
            metrics = {"global_step": self.state.global_step, **report.to_dict()}
            atomic_write(os.path.join(output_dir, METRICS_NAME), json_text(metrics))

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        dataset_name: str | None = None,
        metrics: dict[str, float] | None = None,
        reference_metrics: dict[str, float] | None = None,
    ) -> None:
        """Write `README.md` with the current clusterability scores, and the block heatmap, into `args.output_dir`.

        Arguments are `Trainer.create_model_card`'s (`dataset_args` is unused; TRL's `dataset_name` is a dataset
        tag), plus:
            metrics (`dict`, *optional*): task metrics to report; defaults to the last evaluation's `eval_*` values.
            reference_metrics (`dict`, *optional*): the same metrics from a run without the clusterability loss
                (e.g. a plain `Trainer(...).evaluate()`), shown side by side. `push_to_hub(reference_metrics=...)`
                passes it through.
        """
        if not self.is_world_process_zero():
            return
        if metrics is None:
            evals = [e for e in self.state.log_history if any(k.startswith("eval_") for k in e)]
            metrics = evals[-1] if evals else None
        hub_id = self.hub_model_id or self.args.hub_model_id
        if model_name is None:
            model_name = hub_id.split("/")[-1] if hub_id else os.path.basename(os.path.abspath(self.args.output_dir))
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        host_tags = [t for t in getattr(self, "_tag_names", []) if t not in self._cluster_tag_names]
        report, weights = self._saved_report()
        write_card(
            self.args.output_dir,
            self.model,
            report,
            self.cluster_config,
            weights=weights,
            model_name=model_name,
            repo_id=hub_id or model_name,
            base_model=finetuned_from or self.cluster_config.base_model_name_or_path,
            datasets=dataset_tags or dataset or dataset_name,
            metrics=metrics,
            reference_metrics=reference_metrics,
            tags=[*self._cluster_tag_names, *host_tags, *tags],
            language=language,
            license=license,
            pipeline_tag=tasks[0] if isinstance(tasks, list) and tasks else tasks or None,
        )

    def _hide_hub_token(self) -> None:
        """Keep `args.hub_token` usable for uploads but out of every file, before Trainer pickles the args."""
        if self.args.hub_token and not isinstance(self.args.hub_token, HubToken):
            self.args.hub_token = HubToken(self.args.hub_token)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self._hide_hub_token()
        super()._save(output_dir, state_dict)
        self.save_cluster_files(output_dir if output_dir is not None else self.args.output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        # Trainer's checkpoint push copies only model files from the checkpoint into output_dir, so put ours and the
        # card there first (the TRL pattern for model cards).
        self._hide_hub_token()
        self._take_snapshot()
        self._send_to_trackers()
        if self.args.push_to_hub and self.args.hub_strategy != HubStrategy.END:
            self.save_cluster_files(self.args.output_dir)
            self.create_model_card()
        super()._save_checkpoint(model, trial)

    def _restore_clusters(self, checkpoint: str) -> None:
        if os.path.isfile(os.path.join(checkpoint, CONFIG_NAME)):
            self._check_resumable(checkpoint, ClusterConfig.from_pretrained(checkpoint))
        if os.path.isfile(os.path.join(checkpoint, CLUSTERS_NAME)):
            k = self.cluster_config.n_clusters
            partitions = load_clusters(checkpoint, n_clusters=k, targets=self.cluster_targets)
            check_clusters(partitions, self.cluster_targets, k)
            self._set_partitions(partitions)
        elif self.cluster_config.init == "spectral":
            warnings.warn(
                f"{checkpoint} holds no {CLUSTERS_NAME}; spectral clusters will be computed from its weights.",
                stacklevel=3,
            )

    def _check_resumable(self, checkpoint: str, saved: ClusterConfig) -> None:
        """Refuse a checkpoint whose clusters mean something else here: another model type, other target matrices
        (compared as resolved on this model, so the default targets written out or an equivalent regex match), or
        another k, coupling or init. The message shows both values."""
        ours = self.cluster_config
        model_type = ours.model_type  # read from this model when the trainer was built
        diff = {}
        if saved.model_type is not None and model_type is not None and saved.model_type != model_type:
            diff["model_type"] = (saved.model_type, model_type)
        for field in ("n_clusters", "coupled", "init"):
            if getattr(saved, field) != getattr(ours, field):
                diff[field] = (getattr(saved, field), getattr(ours, field))
        if "model_type" not in diff:
            try:
                names = [t.name for t in find_targets(self.model, saved.targets, coupled=saved.coupled)]
            except ValueError as err:
                names = [f"<none on this model: {err}>"]
            if names != [t.name for t in self.cluster_targets]:
                diff["targets"] = (saved.targets, ours.targets)
        if diff:
            both = "; ".join(f"{f}: checkpoint {a!r}, this run {b!r}" for f, (a, b) in diff.items())
            raise ValueError(
                f"checkpoint {checkpoint} was trained with a different cluster config ({both}); "
                "resume with ClusterConfig.from_pretrained(checkpoint), or train into another output_dir."
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint found in output_dir {self.args.output_dir} to resume from.")
        if resume_from_checkpoint:
            self._restore_clusters(resume_from_checkpoint)
        elif self.args.should_save and holds_checkpoints(self.args.output_dir):
            warnings.warn(
                f"output_dir {self.args.output_dir} holds checkpoints of an earlier run, which this run will "
                "overwrite step by step; pass resume_from_checkpoint=True to continue it, or use another output_dir.",
                stacklevel=2,
            )
        return super().train(resume_from_checkpoint or None, *args, **kwargs)
