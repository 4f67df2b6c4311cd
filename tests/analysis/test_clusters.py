"""`cluster_parts`: each cluster alone is the extracted model, the model without it is the ablated one, the target
tables rank what they claim to, and the sum-of-parts check against a direct computation; its place in `analyze`."""

import json

import pytest
import torch
from PIL import Image

from hf_clusterable import ClusterConfig, extract_cluster, find_targets
from hf_clusterable.analysis.ablation import ablation_units, evaluate_task, restored, zero_cluster
from hf_clusterable.analysis.analyze import analyze
from hf_clusterable.analysis.clusters import cluster_parts, evaluate_cluster
from hf_clusterable.analysis.tasks import causal_lm_task
from hf_clusterable.cli.main import main
from tests.testing_utils import (
    BLOCKS,
    planted_model,
    planted_task,
    random_partitions,
    random_tokens,
    save_clustered,
    shake,
    tiny_model,
    tiny_tokenizer,
)


@pytest.fixture(scope="module")
def setup():
    model = shake(tiny_model("gpt_neox"), 0.3)
    partitions = random_partitions(model, k=3, seed=2)
    targets = find_targets(model, list(partitions))
    task = causal_lm_task(random_tokens(24, 16, seed=3).tolist(), batch_size=8)
    return model, targets, partitions, task


def down_outputs(model, ids, names):
    """MLP outputs minus bias of the named down projections, by a direct forward hook."""
    modules = dict(model.named_modules())
    seen = {}
    handles = [
        modules[n].register_forward_hook(lambda m, a, y, n=n: seen.__setitem__(n, (y - m.bias).detach()))
        for n in names
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return seen


def test_alone_and_without_are_the_extracted_and_ablated_models(setup):
    model, targets, partitions, task = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parts = cluster_parts(model, task, targets, partitions, min_count=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    full = evaluate_task(model, task)
    assert parts.full_loss == pytest.approx(full.loss, abs=1e-6) and parts.n_predictions == full.n_examples
    units = ablation_units(model, targets, partitions)
    for c, part in enumerate(parts.clusters):
        assert part.alone_loss == pytest.approx(evaluate_task(extract_cluster(model, partitions, c), task).loss, 1e-6)
        with restored(model, [u.module for u in units]):
            zero_cluster(model, units, c)
            assert part.without_loss == pytest.approx(evaluate_task(model, task).loss, 1e-6)
        scores = evaluate_cluster(model, task, targets, partitions, c)
        assert (scores.alone_loss, scores.without_loss) == pytest.approx((part.alone_loss, part.without_loss), 1e-6)
    labels = partitions["gpt_neox.layers.0.mlp.dense_h_to_4h"].row_labels
    assert [p.neurons for p in parts.clusters[:1]] == [
        int((labels == 0).sum()) + int((partitions["gpt_neox.layers.1.mlp.dense_h_to_4h"].row_labels == 0).sum())
    ]
    assert sum(p.share for p in parts.clusters) == pytest.approx(1.0)


def test_target_tables_rank_by_what_they_claim(setup):
    model, targets, partitions, task = setup
    parts = cluster_parts(model, task, targets, partitions, top=4, min_count=2)
    for part in parts.clusters:
        rises = [e.loss - e.full_loss for e in part.rises_most_without]
        assert rises == sorted(rises, reverse=True) and len(rises) == 4
        alone = [e.loss for e in part.best_alone]
        assert alone == sorted(alone)
        assert all(e.count >= 2 and e.text == str(e.target) for e in part.best_alone)
    # The first cluster's top target: its mean loss without the cluster, recomputed directly.
    effect = parts.clusters[0].rises_most_without[0]
    units = ablation_units(model, targets, partitions)
    losses = []
    with restored(model, [u.module for u in units]), torch.no_grad():
        zero_cluster(model, units, 0)
        for batch in task.batches:
            logits, target = task.predict(model, batch)
            losses.append(torch.nn.functional.cross_entropy(logits, target, reduction="none")[target == effect.target])
    assert effect.loss == pytest.approx(float(torch.cat(losses).mean()), 1e-5)


def test_sum_of_parts_matches_a_direct_computation_and_is_exact_at_the_first_mlp(setup):
    model, targets, partitions, task = setup
    parts = cluster_parts(model, task, targets, partitions)
    names = ["gpt_neox.layers.0.mlp.dense_4h_to_h", "gpt_neox.layers.1.mlp.dense_4h_to_h"]
    assert parts.layers == names
    error, norm = torch.zeros(2), torch.zeros(2)
    for batch in task.batches:
        ids = batch["input_ids"]
        full = down_outputs(model, ids, names)
        total = {n: torch.zeros_like(y) for n, y in full.items()}
        for c in range(3):
            alone = down_outputs(extract_cluster(model, partitions, c), ids, names)
            total = {n: total[n] + alone[n] for n in names}
        keep = batch["attention_mask"].bool()
        for i, n in enumerate(names):
            error[i] += (full[n] - total[n])[keep].pow(2).sum()
            norm[i] += full[n][keep].pow(2).sum()
    direct = (error / norm).sqrt()
    assert parts.sum_of_parts_error[0] < 1e-5  # same input in every sub-model: linear in the hidden neurons
    assert parts.sum_of_parts_error[1] == pytest.approx(float(direct[1]), rel=1e-4) and direct[1] > 0.05


def test_analyze_reports_each_cluster_and_skips_per_matrix_clusters(setup, tmp_path):
    model, _, partitions, task = setup
    report = analyze(model, task, ClusterConfig(n_clusters=3), random_splits=0, max_categories=0)
    assert report.parts is not None and len(report.parts.clusters) == 3 and report.parts_skipped is None
    text = report.to_markdown()
    assert "## Each cluster on its own" in text and "### Sum of parts" in text and "(clusters.png)" in text
    report.save(tmp_path, model)
    assert Image.open(tmp_path / "clusters.png").size[0] > 300
    assert len(json.loads((tmp_path / "analysis.json").read_text())["parts"]["clusters"]) == 3

    planted = analyze(planted_model(), planted_task(), BLOCKS, random_splits=0, max_categories=0)
    assert planted.parts is None and "clustered on its own" in planted.parts_skipped
    assert "Not measured: " in planted.to_markdown()
    off = analyze(model, task, ClusterConfig(n_clusters=3), random_splits=0, max_categories=0, per_cluster=False)
    assert off.parts is None and "Each cluster on its own" not in off.to_markdown()


def test_cli_causal_lm_decodes_tokens(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    model = shake(tiny_model("llama", vocab_size=len(tokenizer)), 0.1)
    save_clustered(tmp_path / "lm", model, ClusterConfig(n_clusters=2, init="blocks"), tokenizer)
    from hf_clusterable.examples.offline import pydoc_text

    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_text()[300:310]))
    argv = ["analyze", str(tmp_path / "lm"), "--task", "causal-lm", "--dataset", str(data), "--quiet"]
    assert main([*argv, "--max-length", "32", "--random-splits", "0", "--circuit-categories", "0"]) == 0
    assert "each cluster alone: loss" in capsys.readouterr().out
    report = (tmp_path / "lm" / "analysis" / "report.md").read_text()
    section = report.split("## Each cluster on its own")[1].split("### Sum of parts")[0]
    decoded = {tokenizer.decode([i]) for i in range(len(tokenizer))}
    cells = [cell for line in section.splitlines() if line.startswith("| 0 | ") for cell in line.split(" | ")[1:]]
    assert any(repr(t) in cells[-1] for t in decoded if len(t) > 1)
    assert (tmp_path / "lm" / "analysis" / "clusters.png").is_file()
