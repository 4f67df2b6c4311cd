"""Evaluation tasks: examples, per-category scoring and the categories themselves."""

import pytest
import torch
from datasets import Dataset

from hf_clusterable.analysis.ablation import evaluate_task
from hf_clusterable.analysis.tasks import causal_lm_task, classification_task, frequency_categories
from hf_clusterable.examples.models import modular_addition_model
from hf_clusterable.examples.modular_addition import modular_addition_task
from tests.testing_utils import tiny_model


def test_frequency_buckets_split_target_mass():
    targets = torch.tensor([0] * 50 + [1] * 20 + [2] * 10 + [3] * 10 + [4] * 5 + [5] * 5)
    table, names = frequency_categories(targets, n_buckets=4)
    # token 0 alone holds half the mass, so the 25-50% bucket is empty and dropped
    assert table.tolist() == [0, 1, 1, 2, 2, 2]
    assert len(names) == 3 and "50% of targets" in names[0] and "30% of targets" in names[1]


def test_causal_lm_task_scores_every_real_token_once():
    rows = [list(range(1, 9)), [5, 6, 7], [9, 9, 9, 9, 9, 2]]
    task = causal_lm_task(rows, batch_size=2)
    model = tiny_model("gpt2")
    result = evaluate_task(model, task)
    assert result.n_examples == 7 + 2 + 5  # pads are never predictions
    assert sum(result.category_counts) == result.n_examples


def test_token_type_categories_from_a_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "Ġthe": 1, "cat": 2, "Ġ42": 3, ".": 4, "▁dog": 5, "Ċ": 6}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[PAD]")), pad_token="[PAD]"
    )
    task = causal_lm_task([[1, 2, 3, 4, 5], [1, 5, 4]], tokenizer=tokenizer, categories="type")
    kinds = {name: j for j, name in enumerate(task.category_names)}
    assert task.category_names == ["word start", "word continuation", "number", "punctuation"]  # only those predicted
    assert task.category_of(torch.tensor([1, 2, 3, 4, 5])).tolist() == [
        kinds["word start"],
        kinds["word continuation"],
        kinds["number"],
        kinds["punctuation"],
        kinds["word start"],
    ]
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        causal_lm_task([[1, 2]], categories="type")


def test_modular_addition_task_has_one_category_per_answer():
    task = modular_addition_task(7, seed=0)
    model = modular_addition_model(p=7, d_model=16, n_heads=2, d_mlp=16)
    result = evaluate_task(model, task)
    assert task.n_categories == 7 and result.n_examples == 49 - round(0.3 * 49)
    assert task.category_of(torch.tensor([7, 3, 100])).tolist() == [-1, 3, -1]  # "=" and unknown ids: no category


def test_dataset_without_labels_is_refused():
    with pytest.raises(ValueError, match="no 'labels' column"):
        classification_task(Dataset.from_dict({"pixel_values": [[0.0] * 4]}))
    with pytest.raises(ValueError, match="neither 'input_ids' nor"):
        causal_lm_task(Dataset.from_dict({"foo": [1]}))
