"""`hf-clusterable extract`: what it writes (model, tokenizer, card), that the written model reloads to the silenced
full model, `--all`, `--push-to-hub`, and bad input ending in one line with nothing written."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_clusterable import ClusterConfig
from hf_clusterable.cli.main import main
from tests.testing_utils import random_tokens, save_clustered, shake, silence_others, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny clustered Llama (gated MLPs, spectral clusters of uneven sizes) with a tokenizer, and its partitions."""
    folder = tmp_path_factory.mktemp("clustered")
    tokenizer = tiny_tokenizer()
    model = shake(tiny_model("llama", vocab_size=len(tokenizer)), 0.2)
    return folder, save_clustered(folder, model, ClusterConfig(n_clusters=3), tokenizer)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    from hf_clusterable.examples.offline import pydoc_text

    path = tmp_path_factory.mktemp("data") / "heldout.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_text()[300:312]))
    return path


def card_header(path) -> dict:
    return yaml.safe_load(path.read_text().split("---")[1])


def assert_reloads_to_silenced(folder, checkpoint_folder, partitions, cluster):
    ids = random_tokens(2, 10)
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    reference = silence_others(AutoModelForCausalLM.from_pretrained(checkpoint_folder).eval(), partitions, cluster)
    with torch.no_grad():
        assert (reloaded(ids).logits - reference(ids).logits).abs().max() < 1e-5


def test_one_cluster_with_tokenizer_card_and_held_out_loss(checkpoint, text_data, tmp_path, capsys):
    folder, partitions = checkpoint
    out = tmp_path / "cluster-1"
    argv = ["extract", str(folder), "--cluster", "1", "--output-dir", str(out), "--dataset", str(text_data)]
    assert main([*argv, "--max-length", "32"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("cluster 1: ") and "loss alone" in line and line.endswith(str(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not (out / "cluster_config.json").exists()  # one cluster has no clusters left to describe
    assert_reloads_to_silenced(out, folder, partitions, 1)
    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(folder))

    header = card_header(out / "README.md")
    block = header["extracted_cluster"]
    labels = (
        partitions["model.layers.0.mlp.down_proj"].col_labels,
        partitions["model.layers.1.mlp.down_proj"].col_labels,
    )
    neurons = [int((labels_of_layer == 1).sum()) for labels_of_layer in labels]
    assert block["source"] == str(folder) and block["cluster"] == 1 and block["n_clusters"] == 3
    assert block["neurons_per_mlp"] == neurons and block["intermediate_size"] == max(neurons)
    assert block["share_of_mlp_weights"] == pytest.approx(sum(neurons) / 192, abs=1e-6)
    scores = block["evaluation"]
    assert scores["task"] == "causal-lm" and scores["n_examples"] > 100
    assert scores["alone_loss"] != scores["full_loss"] != scores["without_loss"]
    assert "cluster-extraction" in header["tags"] and "base_model" not in header  # a local source is no Hub id
    text = (out / "README.md").read_text()
    assert f"| hidden neurons kept | {sum(neurons)} of 192" in text and "| this cluster alone |" in text


def test_all_clusters_one_folder_each(checkpoint, tmp_path, capsys):
    folder, partitions = checkpoint
    out = tmp_path / "clusters"
    assert main(["extract", str(folder), "--all", "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cluster-0", "cluster-1", "cluster-2"]
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    for c in range(3):
        assert card_header(out / f"cluster-{c}" / "README.md")["extracted_cluster"]["cluster"] == c
        assert "evaluation" not in card_header(out / f"cluster-{c}" / "README.md")["extracted_cluster"]
    assert_reloads_to_silenced(out / "cluster-2", folder, partitions, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_overwrite_replaces_the_folder_files(checkpoint, tmp_path):
    folder, partitions = checkpoint
    out = tmp_path / "out"
    assert main(["extract", str(folder), "--cluster", "0", "--output-dir", str(out)]) == 0
    assert main(["extract", str(folder), "--cluster", "2", "--output-dir", str(out), "--overwrite"]) == 0
    assert card_header(out / "README.md")["extracted_cluster"]["cluster"] == 2
    assert_reloads_to_silenced(out, folder, partitions, 2)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-clusterable: error:") and "Traceback" not in "".join(err)
    return err[-1]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--cluster", "3"], "cluster 3 is out of range: the model has k = 3 clusters, numbered 0 to 2"),
        (["--cluster", "-1"], "--cluster must be >= 0"),
        (["--cluster", "1", "--all"], "give either --cluster C or --all"),
        ([], "give either --cluster C or --all"),
        (["--cluster", "0", "--push-to-hub", "bad//repo"], "invalid repo id"),
        (["--cluster", "0", "--task", "mnist"], "unknown task 'mnist'"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_write_nothing(checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["extract", str(checkpoint[0]), "--output-dir", str(out), *extra]) == 2
    assert message in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_folder_that_is_not_a_clustered_checkpoint(tmp_path, capsys):
    tiny_model("gpt2").save_pretrained(tmp_path / "plain")
    out = tmp_path / "out"
    assert main(["extract", str(tmp_path / "plain"), "--cluster", "0", "--output-dir", str(out)]) == 2
    assert "has no cluster_config.json: extract needs a model saved with its clusters" in _one_line_error(capsys)
    assert main(["extract", str(tmp_path / "nowhere"), "--cluster", "0", "--output-dir", str(out)]) == 2
    assert "no such checkpoint folder" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_uncoupled_clusters_are_refused(tmp_path, capsys):
    save_clustered(tmp_path / "ckpt", tiny_model("gpt2"), ClusterConfig(n_clusters=2, coupled=False))
    out = tmp_path / "out"
    assert main(["extract", str(tmp_path / "ckpt"), "--cluster", "0", "--output-dir", str(out)]) == 2
    assert "is clustered on its own" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_unwritable_or_non_empty_output_folder(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["extract", str(checkpoint[0]), "--cluster", "0", "--output-dir"]
    assert main([*argv, str(tmp_path / "file" / "out")]) == 2
    assert "is not a writable folder" in _one_line_error(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main([*argv, str(tmp_path / "full")]) == 2
    assert "is not empty; pass --overwrite" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_push_to_hub_one_repo_per_cluster(checkpoint, fake_hub, tmp_path, capsys):
    folder = str(checkpoint[0])
    assert (
        main(
            ["extract", folder, "--cluster", "1", "--output-dir", str(tmp_path / "one"), "--push-to-hub", "tester/one"]
        )
        == 0
    )
    files = fake_hub.files("tester/one")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    assert files["model.safetensors"] == (tmp_path / "one" / "model.safetensors").read_bytes()
    assert (
        main(["extract", folder, "--all", "--output-dir", str(tmp_path / "all"), "--push-to-hub", "tester/each"]) == 0
    )
    for c in range(3):
        card = fake_hub.files(f"tester/each-cluster-{c}")["README.md"].decode()
        assert f"cluster: {c}" in card and f"model_name: each-cluster-{c}" in card
