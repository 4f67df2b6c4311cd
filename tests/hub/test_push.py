"""Pushes to the stand-in Hub (tests/fake_hub.py): what arrives, what loads back, what fails before uploading."""

import json
import logging
import shutil

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from hf_clusterable import ClusterConfig, measure, push_folder
from hf_clusterable.cli.main import main
from hf_clusterable.constants import CLUSTERS_NAME, CONFIG_NAME, HEATMAP_NAME, METRICS_NAME
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import NO_DROPOUT, V, make_args, pattern_data, tiny_model


TOKEN = "hf_DistinctivePushToken_7c1e"  # must only ever reach the server's Authorization header
CLUSTER_FILES = {CONFIG_NAME, CLUSTERS_NAME, METRICS_NAME, "README.md", HEATMAP_NAME}
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors"}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(V - 1)} | {"<eos>": V - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


def make_trainer(output_dir, **args) -> ClusterableTrainer:
    return ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=make_args(output_dir, max_steps=4, logging_steps=2, **args),
        train_dataset=pattern_data(64),
        eval_dataset=pattern_data(16, seed=1),
        processing_class=tiny_tokenizer(),
        cluster_config=ClusterConfig(loss_weight=20.0),
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A trained model saved by ClusterableTrainer (no card yet); tests copy it before changing anything."""
    path = tmp_path_factory.mktemp("saved")
    trainer = make_trainer(path / "run")
    trainer.train()
    trainer.save_model(str(path / "model"))
    return path / "model"


@pytest.fixture
def all_logs(caplog):
    """Every record of transformers, huggingface_hub and hf_clusterable, down to DEBUG, lands in caplog."""
    names = ("transformers", "huggingface_hub", "hf_clusterable")
    levels = {name: logging.getLogger(name).level for name in names}
    transformers_logging.enable_propagation()  # transformers keeps its records to itself by default
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    transformers_logging.disable_propagation()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def assert_token_nowhere(hub, tmp_path, caplog, capfd, repo_ids):
    """The token reached the server as a header and nothing else: not in local files, pushed files, output or logs."""
    secret = TOKEN.encode()
    assert f"Bearer {TOKEN}" in hub.auth_headers
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or secret not in path.read_bytes(), path
    for repo_id in repo_ids:
        for ref in hub.refs(repo_id):
            for name, data in hub.files(repo_id, ref).items():
                assert secret not in data, f"{repo_id}@{ref}:{name}"
    assert not any(TOKEN in path for _, path in hub.requests)
    out, err = capfd.readouterr()  # file-descriptor level: also what libraries write to the real stderr
    assert TOKEN not in out + err
    assert caplog.records and not any(TOKEN in record.getMessage() for record in caplog.records)


def test_trainer_push_to_hub_end_to_end(fake_hub, tmp_path, all_logs, capfd):
    trainer = make_trainer(tmp_path / "out", push_to_hub=True, hub_model_id="tester/tiny-clustered")
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(token=TOKEN, reference_metrics={"eval_loss": 0.5})
    report = trainer.cluster_report()

    files = fake_hub.files("tester/tiny-clustered")
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json"}
    assert set(files) == MODEL_FILES | CLUSTER_FILES | tokenizer_files | {"training_args.bin"}
    for name, data in files.items():
        assert data == (tmp_path / "out" / name).read_bytes(), name
    assert json.loads(files[METRICS_NAME])["global_step"] == 4

    card = ModelCard(files["README.md"].decode())
    assert card.data.eval_results[0].metric_value == pytest.approx(report.mean, abs=1e-6)
    assert card.data.model_name == "tiny-clustered" and {"hf_clusterable", "clusterability"} <= set(card.data.tags)
    eval_loss = trainer.state.log_history[-1]["eval_loss"]
    assert f"| eval_loss | {eval_loss:.4f} | 0.5000 |" in card.text
    assert f"]({HEATMAP_NAME})" in card.text

    model = AutoModelForCausalLM.from_pretrained("tester/tiny-clustered")
    assert ClusterConfig.from_pretrained("tester/tiny-clustered") == trainer.cluster_config
    reloaded = measure(model, "tester/tiny-clustered")
    assert [r.name for r in reloaded.rows] == [r.name for r in report.rows]
    for ours, theirs in zip(reloaded.rows, report.rows, strict=True):
        assert ours.score == pytest.approx(theirs.score, abs=1e-6)
        assert card.data.clusterability["per_matrix"][ours.name]["score"] == pytest.approx(ours.score, abs=1e-6)
    assert AutoTokenizer.from_pretrained("tester/tiny-clustered")("t1 t2")["input_ids"] == [1, 2]
    assert_token_nowhere(fake_hub, tmp_path, all_logs, capfd, ["tester/tiny-clustered"])


@pytest.mark.parametrize("strategy", ["every_save", "checkpoint"])
def test_checkpoint_pushes_carry_clusters_and_card_and_never_the_token(fake_hub, tmp_path, all_logs, capfd, strategy):
    trainer = make_trainer(
        tmp_path / "out",
        push_to_hub=True,
        hub_model_id="tester/ckpt",
        hub_strategy=strategy,
        hub_token=TOKEN,  # Trainer pickles its args into training_args.bin: the token must not go with them
        hub_always_push=True,
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()  # waits for the checkpoint pushes

    files = fake_hub.files("tester/ckpt")
    assert MODEL_FILES | CLUSTER_FILES <= set(files)
    metrics = json.loads(files[METRICS_NAME])
    assert metrics["global_step"] == 4
    card = ModelCard(files["README.md"].decode())
    assert card.data.eval_results[0].metric_value == pytest.approx(metrics["mean"], abs=1e-6)
    if strategy == "checkpoint":
        assert {f"last-checkpoint/{name}" for name in (CONFIG_NAME, CLUSTERS_NAME, METRICS_NAME)} <= set(files)
    assert (tmp_path / "out" / "training_args.bin").is_file()
    assert_token_nowhere(fake_hub, tmp_path, all_logs, capfd, ["tester/ckpt"])


def test_cli_push_renders_card_uploads_and_prints_url(fake_hub, saved_model, tmp_path, all_logs, capfd):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "junk.bin").write_bytes(b"x")
    assert not (folder / "README.md").exists()

    assert main(["push", str(folder), "tester/from-cli", "--token", TOKEN]) == 0
    out, err = capfd.readouterr()
    assert out.strip().splitlines()[-1] == f"{fake_hub.endpoint}/tester/from-cli"
    assert TOKEN not in out + err

    files = fake_hub.files("tester/from-cli")
    local = {p.name for p in folder.iterdir() if p.is_file()}
    assert set(files) == local and CLUSTER_FILES <= local and not any("checkpoint" in name for name in files)
    card = ModelCard(files["README.md"].decode())
    report = measure(AutoModelForCausalLM.from_pretrained(folder), folder)
    assert card.data.eval_results[0].metric_value == pytest.approx(report.mean, abs=1e-6)
    assert 'measure(model, "tester/from-cli")' in card.text
    assert_token_nowhere(fake_hub, tmp_path, all_logs, capfd, ["tester/from-cli"])


def test_push_without_saved_clusters_uploads_the_ones_it_scored(fake_hub, saved_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    (folder / CLUSTERS_NAME).unlink()
    (folder / METRICS_NAME).unlink()
    assert main(["push", str(folder), "tester/reclustered"]) == 0
    assert CLUSTER_FILES <= set(fake_hub.files("tester/reclustered"))
    card = ModelCard.load("tester/reclustered")
    reloaded = measure(AutoModelForCausalLM.from_pretrained("tester/reclustered"), "tester/reclustered")
    assert card.data.clusterability["mean"] == pytest.approx(reloaded.mean, abs=1e-6)


def test_cli_push_to_branch_pr_and_private_repo(fake_hub, saved_model, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    assert main(["push", str(folder), "tester/branchy", "--revision", "dev", "--private"]) == 0
    assert CONFIG_NAME in fake_hub.files("tester/branchy", "dev")
    assert CONFIG_NAME not in fake_hub.files("tester/branchy", "main")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("tester/branchy", token=False)  # private: hidden from anonymous reads

    assert main(["push", str(folder), "tester/branchy", "--create-pr"]) == 0
    assert capsys.readouterr().out.strip().endswith("/tester/branchy/discussions/1")
    assert CLUSTERS_NAME in fake_hub.files("tester/branchy", "refs/pr/1")
    assert CONFIG_NAME not in fake_hub.files("tester/branchy", "main")

    info = push_folder(folder, "tester/branchy", revision="v2")  # the Python API behind the command
    assert info.oid == fake_hub.refs("tester/branchy")["v2"]
    assert CLUSTERS_NAME in fake_hub.files("tester/branchy", "v2")


def test_cluster_config_push_to_hub(fake_hub):
    config = ClusterConfig(n_clusters=3, targets=["mlp.c_fc"], loss_weight=35.0)
    config.push_to_hub("tester/config-only")
    assert CONFIG_NAME in fake_hub.files("tester/config-only")
    assert ClusterConfig.from_pretrained("tester/config-only") == config


def _bad_partitions(folder):
    """Weights of a wider MLP next to the clusters of the narrower one they replace."""
    tiny_model("gpt2", n_inner=128).save_pretrained(folder)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda folder: (folder / CONFIG_NAME).unlink(), "has no cluster_config.json"),
        (lambda folder: (folder / CONFIG_NAME).write_text("{not json"), "could not read"),
        (_bad_partitions, "clusters.safetensors does not match this model"),
    ],
)
def test_bad_folder_fails_before_any_upload_or_write(fake_hub, saved_model, tmp_path, capsys, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    damage(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["push", str(folder), "tester/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-clusterable: error:") and message in err[-1] and "Traceback" not in "".join(err)
    assert fake_hub.requests == []
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_invalid_repo_id_fails_before_any_request(fake_hub, saved_model, capsys):
    assert main(["push", str(saved_model), "not a/valid/repo"]) == 2
    assert "invalid repo id" in capsys.readouterr().err
    assert fake_hub.requests == [] and not (saved_model / "README.md").exists()


@pytest.mark.parametrize(
    "failure,message",
    [
        (dict(status=500, path_contains="/commit/"), "500 Internal Server Error"),
        (dict(drop=True, path_contains="/commit/"), "RemoteProtocolError"),
        (dict(status=403, path_contains="/repos/create"), "403 Forbidden"),
    ],
)
def test_hub_errors_are_one_line_with_exit_2(fake_hub, saved_model, tmp_path, capsys, failure, message):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    fake_hub.fail_next(1, **failure)
    assert main(["push", str(folder), "tester/flaky", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("hf-clusterable: error: push to tester/flaky failed:") and message in last
    assert "Traceback" not in err and TOKEN not in err
    if "create" not in failure["path_contains"]:
        assert fake_hub.files("tester/flaky") == {}  # the failed commit left nothing behind
