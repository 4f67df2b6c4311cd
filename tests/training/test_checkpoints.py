"""Which checkpoint is whole, whether a folder holds any, and a Hub token that never reaches a pickle."""

import copy
import pickle

import pytest

from hf_clusterable.training.checkpoints import HubToken, holds_checkpoints, last_complete_checkpoint


def make_checkpoint(folder, step, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir()
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_newest_complete_checkpoint_is_chosen_by_step_number_not_name(tmp_path):
    make_checkpoint(tmp_path, 9)
    newest = make_checkpoint(tmp_path, 10)  # sorts before checkpoint-9 as a string
    (tmp_path / "checkpoint-final").mkdir()  # not a step: ignored
    assert last_complete_checkpoint(str(tmp_path)) == str(newest)


def test_a_checkpoint_cut_off_while_saving_is_skipped_with_a_warning(tmp_path):
    whole = make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 4, complete=False)
    with pytest.warns(UserWarning, match="checkpoint-4: it holds no trainer_state.json"):
        assert last_complete_checkpoint(str(tmp_path)) == str(whole)


def test_no_checkpoint(tmp_path):
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
    assert last_complete_checkpoint(str(tmp_path)) is None
    assert not holds_checkpoints(str(tmp_path))
    make_checkpoint(tmp_path, 1, complete=False)
    assert holds_checkpoints(str(tmp_path))


def test_hub_token_works_as_a_string_but_pickles_as_none():
    token = HubToken("hf_secret")
    assert token == "hf_secret" and token.startswith("hf_")
    assert "hf_secret" not in repr(token)
    assert copy.deepcopy(token) is token
    data = pickle.dumps({"hub_token": token})  # what Trainer does to its args
    assert b"hf_secret" not in data
    assert pickle.loads(data) == {"hub_token": None}
