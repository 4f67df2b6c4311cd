"""Tests for the stand-in Hub: huggingface_hub and transformers really round-trip through it, with offline mode on."""

import os


os.environ["HF_HUB_OFFLINE"] = "1"  # as tests/conftest.py does before any import: the fixture must override it

import json
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)
from transformers.utils import hub as transformers_hub

from tests.fake_hub import FakeHub, use_fake_hub


pytest_plugins = ["tests.fake_hub"]  # registers the `fake_hub` fixture


TOKEN = "hf_secret_x"


def _tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    sizes = {"vocab_size": 64, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
    config = GPT2Config(**sizes, bos_token_id=63, eos_token_id=63)
    return GPT2LMHeadModel(config)


def test_fixture_overrides_offline_mode_then_restores_it(tmp_path: Path) -> None:
    assert constants.is_offline_mode(), "HF_HUB_OFFLINE=1 must be in force outside the fixture"
    endpoint_before = constants.ENDPOINT
    with FakeHub() as hub, pytest.MonkeyPatch.context() as mp:
        use_fake_hub(mp, hub.endpoint, tmp_path)
        assert not constants.is_offline_mode()
        assert constants.ENDPOINT == hub.endpoint
        assert HfApi().whoami()["name"] == "tester"  # default fake token, sent to the local server
        assert transformers_hub.hf_api().endpoint == hub.endpoint  # transformers' shared HfApi follows too
    assert constants.is_offline_mode()
    assert constants.ENDPOINT == endpoint_before
    assert transformers_hub.hf_api().endpoint == endpoint_before


def test_upload_folder_then_download(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi()
    folder = tmp_path / "upload"
    (folder / "configs").mkdir(parents=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, folder / "weights.safetensors")
    (folder / "configs" / "meta.json").write_text(json.dumps({"answer": 42}))
    expected = {
        "weights.safetensors": (folder / "weights.safetensors").read_bytes(),
        "configs/meta.json": (folder / "configs" / "meta.json").read_bytes(),
    }

    repo_url = api.create_repo("tester/data", private=True, token=TOKEN)
    assert repo_url.repo_id == "tester/data"
    api.create_repo("tester/data", exist_ok=True, token=TOKEN)
    info = api.upload_folder(repo_id="tester/data", folder_path=folder, token=TOKEN)

    assert fake_hub.files("tester/data") == expected
    assert info.oid == fake_hub.refs("tester/data")["main"]
    assert f"Bearer {TOKEN}" in fake_hub.auth_headers
    assert sorted(api.list_repo_files("tester/data", token=TOKEN)) == sorted(expected)
    assert api.model_info("tester/data", token=TOKEN).sha == info.oid
    assert api.file_exists("tester/data", "configs/meta.json", token=TOKEN)
    assert not api.file_exists("tester/data", "missing.txt", token=TOKEN)
    assert api.repo_exists("tester/data", token=TOKEN)
    assert not api.repo_exists("tester/data", token=False)  # private: hidden from anonymous requests

    path = hf_hub_download("tester/data", "configs/meta.json", token=TOKEN)
    assert Path(path).read_bytes() == expected["configs/meta.json"]
    assert str(tmp_path) in path  # cache isolated under the test's tmp_path
    snapshot = Path(snapshot_download("tester/data", token=TOKEN))
    assert {p: (snapshot / p).read_bytes() for p in expected} == expected


def test_model_push_to_hub_and_from_pretrained(fake_hub: FakeHub) -> None:
    model = _tiny_gpt2()
    model.push_to_hub("tester/tiny")

    assert {"config.json", "model.safetensors", "README.md"} <= set(fake_hub.files("tester/tiny"))
    assert AutoConfig.from_pretrained("tester/tiny").n_embd == 16
    loaded = AutoModelForCausalLM.from_pretrained("tester/tiny")
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_create_pr_lands_on_pr_ref_not_main(fake_hub: FakeHub) -> None:
    api = HfApi()
    assert api.create_repo("pr").repo_id == "tester/pr"  # no namespace: the server uses the token's user
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="tester/pr")
    commit = api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="tester/pr", create_pr=True)

    assert (commit.pr_num, commit.pr_revision) == (1, "refs/pr/1")
    assert fake_hub.files("tester/pr") == {"a.txt": b"a"}
    assert fake_hub.files("tester/pr", revision="refs/pr/1") == {"a.txt": b"a", "b.txt": b"b"}
    assert Path(hf_hub_download("tester/pr", "b.txt", revision="refs/pr/1")).read_bytes() == b"b"
    refs = api.list_repo_refs("tester/pr", include_pull_requests=True)
    assert [ref.ref for ref in refs.pull_requests] == ["refs/pr/1"]


def test_branch_revision(fake_hub: FakeHub) -> None:
    api = HfApi()
    api.create_repo("tester/branchy")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id="tester/branchy").oid
    api.create_branch("tester/branchy", branch="dev")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id="tester/branchy", revision="dev")

    assert fake_hub.files("tester/branchy") == {"f.txt": b"v1"}
    assert Path(hf_hub_download("tester/branchy", "f.txt", revision="dev")).read_bytes() == b"v2"
    assert Path(hf_hub_download("tester/branchy", "f.txt", revision=first)).read_bytes() == b"v1"
    assert api.list_repo_files("tester/branchy", revision="dev") == ["f.txt"]
    assert api.model_info("tester/branchy", revision="dev").sha == fake_hub.refs("tester/branchy")["dev"]
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("tester/branchy", "f.txt", revision="nope")


def test_model_card_push_to_hub(fake_hub: FakeHub) -> None:
    HfApi().create_repo("tester/card")
    ModelCard("---\nlicense: mit\n---\n# Tiny\n").push_to_hub("tester/card")

    assert ("POST", "/api/validate-yaml") in fake_hub.requests
    assert fake_hub.files("tester/card")["README.md"].startswith(b"---\nlicense: mit")
    assert ModelCard.load("tester/card").data.license == "mit"


def test_trainer_push_to_hub(fake_hub: FakeHub, tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (4, 8))]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        push_to_hub=True,
        hub_model_id="tester/t3",
        report_to="none",
        max_steps=2,
        save_strategy="no",
        use_cpu=True,
        per_device_train_batch_size=2,
    )
    trainer = Trainer(model=_tiny_gpt2(), args=args, train_dataset=data)
    trainer.train()
    trainer.push_to_hub()

    assert {"model.safetensors", "config.json"} <= set(fake_hub.files("tester/t3"))


def test_fail_next_makes_upload_raise(fake_hub: FakeHub) -> None:
    api = HfApi()
    api.create_repo("tester/flaky", token=TOKEN)
    fake_hub.fail_next(1, status=500, path_contains="/commit/")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="tester/flaky", token=TOKEN)
    assert err.value.response.status_code == 500
    assert fake_hub.files("tester/flaky") == {}

    fake_hub.fail_next(1, drop=True, path_contains="/commit/")
    with pytest.raises(httpx2.TransportError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="tester/flaky", token=TOKEN)

    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="tester/flaky", token=TOKEN)
    assert fake_hub.files("tester/flaky") == {"x.txt": b"x"}
    assert fake_hub.auth_headers.count(f"Bearer {TOKEN}") >= 4


def test_transient_error_is_retried(fake_hub: FakeHub) -> None:
    HfApi().create_repo("tester/retry")
    fake_hub.fail_next(1, status=503, path_contains="/preupload/")
    HfApi().upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id="tester/retry")

    assert fake_hub.files("tester/retry") == {"y.txt": b"y"}
    assert [p for _, p in fake_hub.requests].count("/api/models/tester/retry/preupload/main") == 2
