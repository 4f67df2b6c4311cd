from pydoc_data.topics import topics

from hf_clusterable.examples.datasets import pydoc_chat_dataset


def test_pydoc_chat_is_prompt_completion_chat_with_real_reference_answers():
    data = pydoc_chat_dataset()
    train, held_out = data["train"], data["validation"]
    assert len(train) > 100 and 0 < len(held_out) < len(train) / 10
    questions = set()
    for example in list(train) + list(held_out):
        (question,), (answer,) = example["prompt"], example["completion"]
        assert question["role"] == "user" and answer["role"] == "assistant"
        key = question["content"].split("'")[1]
        assert answer["content"] in topics[key]  # the reference's own paragraph, verbatim
        questions.add(question["content"])
    assert len(questions) == len(train) + len(held_out)  # no question asked twice
    assert pydoc_chat_dataset()["validation"]["prompt"] == held_out["prompt"]  # the split is fixed by the seed
