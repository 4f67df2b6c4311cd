import argparse

import pytest

from hf_clusterable.cli.flags import cli_message, parameter_flags


FLAGS = {"n_clusters": "-k/--clusters", "coupled=False": "--per-matrix", "gguf_file": "--gguf-file"}


@pytest.mark.parametrize(
    "message,expected",
    [
        ("n_clusters must be an integer >= 2, got 1.", "-k/--clusters must be an integer >= 2, got 1."),
        (
            "n_clusters=40 is larger than the smaller side of x (32, 96); use n_clusters <= 32.",
            "-k/--clusters 40 is larger than the smaller side of x (32, 96); use -k/--clusters <= 32.",
        ),
        ("set coupled=False to cluster each matrix alone.", "set --per-matrix to cluster each matrix alone."),
        ("pick one with gguf_file.", "pick one with --gguf-file."),
        # names inside paths, words, module names and quoted values are left alone
        ("/tmp/n_clusters/x.json: bad", "/tmp/n_clusters/x.json: bad"),
        ("my_n_clusters and n_clusters_max", "my_n_clusters and n_clusters_max"),
        ("unknown key(s) ['n_clusters'] in r.yaml", "unknown key(s) ['n_clusters'] in r.yaml"),
        ("model.gguf_file.weight", "model.gguf_file.weight"),
    ],
)
def test_parameter_names_become_flags(message, expected):
    assert cli_message(message, FLAGS) == expected


def test_options_with_python_names_map_themselves():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--clusters", "-k", type=int)
    parser.add_argument("folder")
    flags = parameter_flags(parser, {"n_clusters": "-k/--clusters"})
    assert flags == {
        "max_steps": "--max-steps",
        "n_clusters": "-k/--clusters",
    }  # `seed` is a word: alias it if need be
