"""The LM trade-off benchmark end to end at its smoke size (a tiny random Llama, no download)."""

import importlib.util
import json
import sys

import pytest

from tests.testing_utils import ROOT


def benchmark():
    spec = importlib.util.spec_from_file_location("lm_tradeoff", ROOT / "benchmarks" / "lm_tradeoff.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_size_writes_results_table_and_plot(tmp_path):
    lm = benchmark()
    assert lm.main(["--size", "smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    methods = {r["method"] for r in results}
    assert methods == {"pretrained", *lm.METHODS}
    for r in results:
        for key in ("clusterability", "normalised", "held_out_ce", "cut_ce", "cut_increase", "steps", "seconds"):
            assert isinstance(r[key], (int, float)), key
        assert 0.0 <= r["clusterability"] <= 1.0
        assert (r["ce_increase"] is None) == (r["method"] == "pretrained")
    assert {r["seed"] for r in results if r["method"] == "reference"} == {0, 1}  # the best point, two seeds
    projected = [r for r in results if r["method"] == "ours+distill+project"]
    assert projected and all(r["clusterability"] == 1.0 and r["cut_increase"] == 0.0 for r in projected)
    assert all(r["ce_increase"] == 0.0 for r in results if r["method"] == "reference")
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    table = (tmp_path / "table.md").read_text()
    assert "| tiny | ours+distill |" in table and "best point" in table and "vs pretrained" in table
    # --table redraws from results.json alone
    (tmp_path / "frontier.png").unlink()
    assert lm.main(["--table", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "frontier.png").is_file()


def test_best_run_prefers_separable_clusters_then_the_cheapest():
    lm = benchmark()

    def row(method, normalised, ce, cut):
        return dict(model="m", method=method, normalised=normalised, ce_increase=ce, cut_increase=cut)

    rows = [row("reference", 0.1, 0.0, 5.0), row("a", 0.95, 0.30, 0.0), row("b", 0.99, 0.10, 0.01),
            row("c", 0.97, 0.01, 0.5)]  # fmt: skip
    assert lm.best_run(rows, "m")["method"] == "b"  # c is cheaper but its clusters are not separable
    rows = [row("reference", 0.1, 0.0, 5.0), row("a", 0.3, 0.05, 3.0), row("b", 0.5, 0.5, 2.0)]
    assert lm.best_run(rows, "m")["method"] == "b"  # nothing separable: the highest normalised C
    assert lm.meets_goal(row("x", 0.91, 0.04, 0.015)) and not lm.meets_goal(row("x", 0.91, 0.06, 0.0))


@pytest.mark.parametrize("lambdas", ["20,abc", "0,20", ","])
def test_bad_lambda_sweep_is_refused_before_any_work(tmp_path, lambdas):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="--lambdas must be"):
        benchmark().main(["--size", "smoke", "--lambdas", lambdas, "--out", str(out)])
    assert not out.exists()
