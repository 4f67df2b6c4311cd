"""Every benchmark script imports against the current layout (they run outside the suite, so a moved module would
otherwise only show up when someone reproduces a number)."""

import importlib.util
import sys
from pathlib import Path

import pytest


SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_imports(path, monkeypatch):
    pytest.importorskip("sklearn")  # cocluster_vs_sklearn needs it; the test extra has it
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)  # module level only: each script's work runs under `if __name__ == "__main__"`
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
