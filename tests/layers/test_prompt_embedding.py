import os

import keras
import numpy as np
import pytest

from keras_peft.layers import PromptEmbedding
from keras_peft.layers import routing
from tests import helpers


def _inputs(batch=2, length=4, width=3):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(batch, length, width)).astype("float32")
    mask = np.ones((batch, length), "int32")
    mask[0, -1] = 0
    return embeddings, mask


@pytest.mark.parametrize("insert_at", [0, 1])
def test_inserts_prompt_and_grows_mask(insert_at):
    embeddings, mask = _inputs()
    layer = PromptEmbedding(length=2, insert_at=insert_at)
    outputs, new_mask = layer(embeddings, mask)
    prompt = layer.prompt.numpy()[0]
    expected = np.concatenate(
        [
            embeddings[:, :insert_at],
            np.repeat(prompt[None], 2, axis=0),
            embeddings[:, insert_at:],
        ],
        axis=1,
    )
    # Exact: the prompt and embeddings are only copied and concatenated.
    np.testing.assert_array_equal(helpers.numpy(outputs), expected)
    expected_mask = np.concatenate(
        [mask[:, :insert_at], np.ones((2, 2), "int32"), mask[:, insert_at:]],
        axis=1,
    )
    # Exact: masks and embeddings are only copied, concatenated and sliced.
    np.testing.assert_array_equal(helpers.numpy(new_mask), expected_mask)
    np.testing.assert_array_equal(
        helpers.numpy(layer.remove_prompt(outputs)), embeddings
    )
    assert layer.compute_output_shape((2, 4, 3)) == ((2, 6, 3), (2, 6))


def _two_lengths(insert_at):
    """A layer holding adapter "a"'s prompt of length 2 and "b"'s of
    length 4, as named adapters leave it."""
    layer = PromptEmbedding(length=2, insert_at=insert_at)
    layer.build((None, None, 3))
    source = PromptEmbedding(length=4, insert_at=insert_at)
    source.build((None, None, 3))
    layer.set_slot_names(["a"])
    layer.add_slot("b", source)
    layer.enable_switching()
    return layer, layer.prompt.numpy()[0], source.prompt.numpy()[0]


@pytest.mark.parametrize("insert_at", [0, 1])
def test_prompts_of_other_lengths_keep_each_examples_tokens_in_place(
    insert_at,
):
    """Each example gets its adapter's prompt, then its tokens (where a
    model with only that prompt has them), then the unused positions of
    the longest prompt, masked out; an adapter without a prompt here gets
    no prompt. `remove_prompt` gives the tokens back."""
    embeddings, mask = _inputs(batch=3)
    layer, prompt_a, prompt_b = _two_lengths(insert_at)
    assert layer.total_length == 4
    assert layer.compute_output_shape((3, 4, 3)) == ((3, 8, 3), (3, 8))
    head, tail = embeddings[:, :insert_at], embeddings[:, insert_at:]
    with routing.per_example(["a", "b", "none"], np.array([1, 0, 2])):
        outputs, new_mask = helpers.numpy(layer(embeddings, mask))
        stripped = helpers.numpy(layer.remove_prompt(outputs))
    for row, prompt in enumerate([prompt_b, prompt_a, prompt_a[:0]]):
        unused = 4 - len(prompt)
        expected = np.concatenate(
            [head[row], prompt, tail[row], np.zeros((unused, 3))]
        )
        expected_mask = np.concatenate(
            [
                mask[row, :insert_at],
                np.ones(len(prompt), "int32"),
                mask[row, insert_at:],
                np.zeros(unused, "int32"),
            ]
        )
        # Exact: values are only copied, concatenated and gathered.
        np.testing.assert_array_equal(outputs[row], expected)
        np.testing.assert_array_equal(new_mask[row], expected_mask)
    np.testing.assert_array_equal(stripped, embeddings)
    # Switched (not routed): the active adapter's prompt for every row.
    layer.select("a")
    outputs, new_mask = helpers.numpy(layer(embeddings, mask))
    np.testing.assert_array_equal(
        outputs[:, insert_at : insert_at + 2],
        np.repeat(prompt_a[None], 3, axis=0),
    )
    np.testing.assert_array_equal(new_mask[:, -2:], np.zeros((3, 2)))
    np.testing.assert_array_equal(
        helpers.numpy(layer.remove_prompt(outputs)), embeddings
    )


def test_a_bank_of_prompts_takes_slots_of_its_length_only():
    layer = PromptEmbedding(length=2, num_prompts=2)
    layer.build((None, None, 3))
    layer.set_slot_names(["a"])
    other = PromptEmbedding(length=3, num_prompts=2)
    other.build((None, None, 3))
    with pytest.raises(ValueError, match="length 2.*not 3"):
        layer.check_slot_source(other)
    same = PromptEmbedding(length=2, num_prompts=2)
    same.build((None, None, 3))
    layer.check_slot_source(same)
    # An adapter holding no slot here has no prompt: masked out.
    layer.enable_switching()
    embeddings, mask = _inputs()
    ids = np.array([0, 1])
    ones, zeros = np.ones((2, 2), "int32"), np.zeros((2, 2), "int32")
    for name, expected in (
        ("none", np.concatenate([mask, zeros], 1)),
        ("a", np.concatenate([ones, mask], 1)),
    ):
        layer.select(name)
        outputs, new_mask = helpers.numpy(layer(embeddings, mask, ids))
        np.testing.assert_array_equal(new_mask, expected)
        np.testing.assert_array_equal(
            helpers.numpy(layer.remove_prompt(outputs)), embeddings
        )


def test_random_init_is_uniform_in_half_unit_interval():
    layer = PromptEmbedding(length=50)
    layer(*_inputs(width=40))
    prompt = layer.prompt.numpy()
    assert prompt.shape == (1, 50, 40)
    assert prompt.min() >= -0.5 and prompt.max() <= 0.5
    assert prompt.std() > 0.2  # uniform(-0.5, 0.5) has std 0.29


def test_bank_of_prompts_selected_per_example():
    embeddings, mask = _inputs(batch=3)
    embeddings = np.concatenate([embeddings, embeddings[:1]], 0)[:3]
    layer = PromptEmbedding(length=2, num_prompts=3)
    outputs, _ = helpers.numpy(
        layer(embeddings, mask[[0, 1, 0]], task_ids=np.array([2, 0, 1]))
    )
    bank = layer.prompt.numpy()
    # Exact: each row's prompt is gathered from the bank.
    for row, task in enumerate([2, 0, 1]):
        np.testing.assert_array_equal(outputs[row, :2], bank[task])
    with pytest.raises(ValueError, match="task_ids"):
        layer(embeddings, mask[[0, 1, 0]])


def test_mixed_precision_output_dtype():
    layer = PromptEmbedding(length=2, dtype="mixed_bfloat16")
    outputs, _ = layer(*_inputs())
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
    assert layer.prompt.dtype == "float32"


def test_serialization_round_trip(tmp_path):
    embeddings = keras.Input((4, 3))
    mask = keras.Input((4,), dtype="int32")
    outputs, new_mask = PromptEmbedding(length=2, insert_at=1)(embeddings, mask)
    model = keras.Model([embeddings, mask], [outputs, new_mask])
    x = _inputs()
    expected = model.predict(list(x), verbose=0)
    path = os.path.join(tmp_path, "prompt.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    # Exact: the same ops run on the same values.
    for a, b in zip(restored.predict(list(x), verbose=0), expected):
        np.testing.assert_array_equal(a, b)
    layer = restored.layers[-1]
    assert PromptEmbedding.from_config(layer.get_config()).get_config() == (
        layer.get_config()
    )


@pytest.mark.parametrize(
    "kwargs", [{"length": 0}, {"length": 2.0}, {"length": 2, "num_prompts": 0}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PromptEmbedding(**kwargs)
