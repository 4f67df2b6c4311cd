"""`hf-clusterable train --config RECIPE`: recipe values of the wrong type are one line naming the file, the key and
the value (not argparse's page of usage), and random recipes fail only with a clear ValueError or TypeError."""

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_clusterable.cli.main import main
from hf_clusterable.scripts.train_args import parse_args
from tests.testing_utils import RECIPES


MODULAR = RECIPES / "transformer-1l" / "modular-addition" / "config_full.yaml"


def recipe(tmp_path, **changes) -> str:
    data = yaml.safe_load(MODULAR.read_text()) | {"output_dir": str(tmp_path / "out")} | changes
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_steps: three", "max_steps must be an integer, got 'three'"),
        ("max_steps: 2.5", "max_steps must be an integer, got 2.5"),
        ("learning_rate: [1]", "learning_rate must be a number, got [1]"),
        ("packing: maybe", "packing must be true or false, got 'maybe'"),
        ("eval_strategy: no", "eval_strategy must be one of no, steps, epoch, got False (YAML reads"),
        ("cluster_init: kmeans", "cluster_init must be one of spectral, blocks, got 'kmeans'"),
        ("block_size: 1.5e3", "block_size must be an integer, got '1.5e3'"),
        ("cluster_target_regex: '(mlp'", "cluster_target_regex '(mlp' is not a valid regex"),
        ("trainable_parameters: '[a'", "trainable_parameters '[a' is not a valid regex"),
        ("cluster_targets: {a: 1}", "cluster_targets must be a list"),
        ("block_size: null", "block_size must be an integer, got null; leave it out for 1024"),
    ],
)
def test_wrong_types_name_the_file_the_key_and_the_value(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(MODULAR.read_text() + "\n" + text + "\n")
    assert main(["train", "--config", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err[:3]
    assert err[0].startswith(f"hf-clusterable: error: --config {path}: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_values_argparse_would_convert_are_accepted(tmp_path):
    script, model, cluster, training = parse_args(
        [
            "--config",
            recipe(tmp_path, learning_rate="3e-4", max_steps="20", packing="false", cluster_targets="mlp.c_fc"),
        ]
    )
    assert training.learning_rate == 3e-4 and training.max_steps == 20 and script.packing is False
    assert cluster.cluster_targets == ["mlp.c_fc"]  # one name, not a regex


KEYS = [
    "max_steps", "learning_rate", "packing", "eval_strategy", "cluster_init", "n_clusters", "cluster_targets",
    "cluster_target_regex", "cluster_loss_weight", "cluster_balance", "block_size", "modulus", "train_fraction",
    "config_overrides", "seed", "report_to", "lora_r", "use_peft", "max_train_samples", "dtype",
]  # fmt: skip
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(min_value=-3, max_value=3) | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(min_value=-3, max_value=3), max_size=2),
)


@settings(
    max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3))
def test_random_recipe_values_fail_only_with_a_clear_error(tmp_path, changes):
    try:
        parse_args(["--config", recipe(tmp_path, **changes)])
    except (ValueError, TypeError) as err:
        assert str(err).strip() and "\n" not in str(err).strip(), repr(err)
    except SystemExit:
        pytest.fail(f"argparse exited on {changes}")
