import dataclasses
import json
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(targets="(mlp"), r"targets '\(mlp' is not a valid regex"),
        (dict(targets=5), "targets must be"),
        (dict(targets=["mlp", 3]), "targets must be"),
        (dict(coupled="no"), "coupled must be true or false"),
        (dict(balance=float("nan")), "balance"),
        (dict(balance=True), "balance"),
        (dict(model_type=7), "model_type must be a string"),
        (dict(hf_clusterable_version=None), "hf_clusterable_version must be a string"),
    ],
)
def test_wrong_types_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ClusterConfig(**kwargs)


def test_a_downloaded_config_with_a_malformed_regex_names_file_and_value(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"targets": "(.*"}))
    with pytest.raises(ValueError, match=r"invalid cluster_config.json at .*: targets '\(\.\*' is not a valid regex"):
        ClusterConfig.from_pretrained(tmp_path)


def test_from_dict_needs_a_mapping():
    with pytest.raises(TypeError, match="must be a JSON object"):
        ClusterConfig.from_dict([("n_clusters", 3)])


# ---- random bad input: a clear ValueError or TypeError, nothing else, never a hang --------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from([f.name for f in dataclasses.fields(ClusterConfig)]) | st.text(max_size=8)


@settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6) | values)
def test_from_dict_on_random_input_returns_a_config_or_a_clear_error(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys warn, as designed
        try:
            config = ClusterConfig.from_dict(data)
        except (ValueError, TypeError) as err:
            assert str(err).strip(), "an error without a message"
            return
    assert isinstance(config.n_clusters, int) and config.n_clusters >= 2
    assert isinstance(config.coupled, bool)
    json.loads(config.to_json_string())  # anything accepted can be saved as strict JSON
