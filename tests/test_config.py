import json
import warnings

import pytest

from hf_clusterable import ClusterConfig, __version__
from hf_clusterable.constants import CONFIG_NAME


def test_round_trip_and_version(tmp_path):
    config = ClusterConfig(n_clusters=3, targets=["mlp.c_fc"], loss_weight=40.0, init="blocks", cluster_step=5)
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert data["hf_clusterable_version"] == __version__
    assert list(data) == sorted(data)
    assert ClusterConfig.from_pretrained(tmp_path) == config
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_keys_warn_and_are_dropped(tmp_path):
    data = ClusterConfig().to_dict() | {"from_the_future": 1}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="from_the_future"):
        config = ClusterConfig.from_pretrained(tmp_path)
    assert config == ClusterConfig()


def test_overrides_and_regex_targets(tmp_path):
    ClusterConfig(targets=r".*mlp\..*").save_pretrained(tmp_path)
    config = ClusterConfig.from_pretrained(tmp_path, n_clusters=6)
    assert config.n_clusters == 6 and config.targets == r".*mlp\..*"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_clusters=1), "n_clusters"),
        (dict(n_clusters=2.5), "n_clusters"),
        (dict(loss_weight=-1.0), "loss_weight"),
        (dict(loss_weight=float("nan")), "loss_weight"),
        (dict(init="kmeans"), "init"),
        (dict(cluster_step=-2), "cluster_step"),
        (dict(balance=1.0), "balance"),
        (dict(targets=[]), "targets"),
    ],
)
def test_invalid_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClusterConfig(**kwargs)


def test_unreadable_and_mismatched_files(tmp_path):
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="could not read"):
        ClusterConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"n_clusters": "four"}))
    with pytest.raises(ValueError, match="invalid cluster_config.json"):
        ClusterConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        ClusterConfig.from_pretrained(tmp_path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cluster_config.json"):
        ClusterConfig.from_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FileNotFoundError, match="could not find cluster_config.json"):
            ClusterConfig.from_pretrained("nobody/nothing-here")  # offline: Hub lookups fail fast


def test_save_into_a_file_path_is_refused(tmp_path):
    f = tmp_path / "x"
    f.write_text("keep me")
    with pytest.raises(ValueError, match="is a file"):
        ClusterConfig().save_pretrained(f)
    assert f.read_text() == "keep me"


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    ClusterConfig().save_pretrained(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / CONFIG_NAME).stat().st_mode & 0o777 == 0o666 & ~umask
