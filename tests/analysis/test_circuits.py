"""Effective circuit size by attribution-guided pruning."""

import torch

from hf_clusterable.analysis.circuits import circuit_sizes
from hf_clusterable.modeling.measure import resolve_clusters
from tests.testing_utils import BLOCKS, planted_model, planted_task


def test_circuits_are_small_for_planted_paths_and_model_is_restored():
    model, task = planted_model(), planted_task(noise=0.0)  # other inputs leave logit c at exactly 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, targets, _ = resolve_clusters(model, BLOCKS)
    circuits = circuit_sizes(model, task, targets, share=0.9, steps=8)
    assert circuits.n_weights == 4 * 8 + 8 * 4
    # class c > 0 needs pixel c -> a hidden neuron -> logit c; class 0 also needs the others (ties answer 0)
    assert max(circuits.fractions[1:]) <= 4 / 64 + 2**-8 < circuits.fractions[0]
    assert 4 / 64 <= circuits.task_fraction <= 0.25
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    lenient = circuit_sizes(model, task, targets, share=0.5, steps=8)
    assert lenient.task_fraction <= circuits.task_fraction
