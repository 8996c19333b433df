"""Prompt tuning on BERT and T5 (Lester et al. 2021)."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from keras_peft.layers import PromptEmbedding
from tests import helpers
from tests import t5_decoding

LENGTH = 4


def _prompt_layer(model):
    found = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, PromptEmbedding)
    ]
    assert len(found) == 1
    return found[0]


def _prompt_values(model):
    return np.asarray(_prompt_layer(model).prompt.numpy())[0]


def _embeddings(model):
    backbone = getattr(model, "backbone", model)
    return np.asarray(backbone.token_embedding.embeddings.numpy())


def _ids(tokenizer, text):
    return np.asarray(tokenizer.tokenize(text)).reshape(-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(length=0),
        dict(length=-3),
        dict(length=2.0),
        dict(init="sampled"),
        dict(init="text"),
        dict(init="text", init_text="  "),
        dict(init="vocab", init_text="hello"),
        dict(init="labels"),
        dict(init="labels", class_labels="positive"),
        dict(init="labels", class_labels=["good", ""]),
        dict(init="labels", class_labels=["a", "b", "c"], length=2),
        dict(init="random", class_labels=["good", "bad"]),
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        keras_peft.PromptTuningConfig(**kwargs)


def test_config_round_trip_leaves_tokenizer_out():
    config = keras_peft.PromptTuningConfig(
        length=5,
        init="labels",
        class_labels=["good", "bad"],
        tokenizer=helpers.bert_tokenizer(),
    )
    data = config.to_dict()
    assert "tokenizer" not in data
    restored = keras_peft.config_from_dict(data)
    assert restored == config and restored.tokenizer is None


def test_bert_prompt_acts_as_tokens_inserted_after_cls():
    """A prompt holding token embeddings computes what inserting those
    tokens after [CLS] computes: positions, segments and mask included, and
    the outputs keep their input length."""
    tokenizer = helpers.bert_tokenizer()
    case = helpers.MODEL_CASES["bert_backbone"]
    plain = case.build()
    model = case.build()
    text = "summarize good plot"
    keras_peft.apply(
        model,
        keras_peft.PromptTuningConfig(
            length=LENGTH, init="text", init_text=text, tokenizer=tokenizer
        ),
    )
    ids = _ids(tokenizer, text)
    prompt_ids = np.resize(ids, LENGTH)  # text repeated to the length
    # Exact: text init copies the text's token embeddings.
    np.testing.assert_array_equal(
        _prompt_values(model), _embeddings(model)[prompt_ids]
    )

    inputs = helpers.bert_inputs()
    inputs["segment_ids"][:, 6:] = 1
    outputs = model(inputs)
    batch = len(inputs["token_ids"])

    def inserted(array, values):
        return np.concatenate(
            [
                array[:, :1],
                np.broadcast_to(values, (batch, LENGTH)),
                array[:, 1:],
            ],
            axis=1,
        )

    expected = plain(
        {
            "token_ids": inserted(inputs["token_ids"], prompt_ids),
            "segment_ids": inserted(inputs["segment_ids"], 0),
            "padding_mask": inserted(inputs["padding_mask"], 1),
        }
    )
    sequence = keras.ops.convert_to_numpy(expected["sequence_output"])
    sequence = np.concatenate([sequence[:, :1], sequence[:, 1 + LENGTH :]], 1)
    assert outputs["sequence_output"].shape == inputs["token_ids"].shape + (
        helpers.BERT["hidden_dim"],
    )
    # Close: two models, wired differently: a prompt vs its tokens embedded.
    np.testing.assert_allclose(outputs["sequence_output"], sequence, atol=1e-5)
    np.testing.assert_allclose(
        outputs["pooled_output"], expected["pooled_output"], atol=1e-5
    )


def _t5_with_prompt(prompt_ids):
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    keras_peft.apply(
        model, keras_peft.PromptTuningConfig(length=LENGTH, init="random")
    )
    _prompt_layer(model).prompt.assign(_embeddings(model)[prompt_ids][None])
    return model


def test_t5_prompt_acts_as_tokens_prepended_to_the_encoder_input():
    case = helpers.MODEL_CASES["t5_seq2seq"]
    prompt_ids = np.array([5, 9, 9, 13])
    model = _t5_with_prompt(prompt_ids)
    plain = case.build()
    inputs = case.inputs()
    batch = len(inputs["encoder_token_ids"])
    prepended = dict(inputs)
    prepended["encoder_token_ids"] = np.concatenate(
        [np.tile(prompt_ids, (batch, 1)), inputs["encoder_token_ids"]], 1
    )
    prepended["encoder_padding_mask"] = np.concatenate(
        [np.ones((batch, LENGTH), "int32"), inputs["encoder_padding_mask"]], 1
    )
    # Close: two models, wired differently: a prompt vs its tokens embedded.
    np.testing.assert_allclose(
        model(inputs), plain(prepended), atol=1e-5, rtol=1e-5
    )
    encoder_plain = keras.ops.convert_to_numpy(
        plain.call_encoder(
            prepended["encoder_token_ids"], prepended["encoder_padding_mask"]
        )
    )
    encoder = keras.ops.convert_to_numpy(
        model.call_encoder(
            inputs["encoder_token_ids"], inputs["encoder_padding_mask"]
        )
    )
    # Close: two encoders, wired differently: a prompt vs its tokens.
    np.testing.assert_allclose(encoder, encoder_plain, atol=1e-5)


def test_t5_cached_generation_uses_the_prompt():
    model = _t5_with_prompt(np.array([5, 9, 9, 13]))
    # Trained values, without the training (fitting T5 is checked in
    # test_method_matrix).
    helpers.randomize_trainable(model)
    t5_decoding.assert_cached_decoding_matches(model)
    t5_decoding.assert_changes_logits(model)


def test_random_init_is_uniform_in_half_unit_range():
    model = helpers.MODEL_CASES["bert_backbone"].build()
    keras_peft.apply(
        model, keras_peft.PromptTuningConfig(length=20, init="random")
    )
    values = _prompt_values(model)
    assert values.min() >= -0.5 and values.max() <= 0.5
    assert values.std() == pytest.approx(1 / np.sqrt(12), rel=0.2)


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_vocab_init_samples_common_vocabulary(with_tokenizer):
    tokenizer = helpers.bert_tokenizer() if with_tokenizer else None
    model = helpers.MODEL_CASES["bert_backbone"].build()
    keras_peft.apply(
        model,
        keras_peft.PromptTuningConfig(
            length=12, init="vocab", tokenizer=tokenizer
        ),
    )
    embeddings = _embeddings(model)
    values = _prompt_values(model)
    # Each prompt vector is one vocabulary entry's embedding.
    distances = np.abs(values[:, None] - embeddings[None]).max(-1)
    ids = distances.argmin(-1)
    # Exact: vocab init copies embedding rows, at distance 0.
    np.testing.assert_array_equal(distances[np.arange(12), ids], 0)
    if with_tokenizer:
        # Special and reserved entries ([CLS], [unused0], ...) are skipped.
        assert ids.min() >= 9
    assert len(set(ids.tolist())) > 1


def test_labels_init_averages_label_tokens_then_samples_vocabulary():
    tokenizer = helpers.bert_tokenizer()
    model = helpers.MODEL_CASES["bert_backbone"].build()
    labels = ["bad movie", "good"]
    keras_peft.apply(
        model,
        keras_peft.PromptTuningConfig(
            length=LENGTH,
            init="labels",
            class_labels=labels,
            tokenizer=tokenizer,
        ),
    )
    embeddings = _embeddings(model)
    values = _prompt_values(model)
    bad, movie = _ids(tokenizer, "bad movie")
    # Close: np.mean's reduction, against (a + b) / 2 written out.
    np.testing.assert_allclose(
        values[0], (embeddings[bad] + embeddings[movie]) / 2, atol=1e-7
    )
    # Exact: a one-token label's mean is that token's embedding.
    np.testing.assert_array_equal(
        values[1], embeddings[_ids(tokenizer, "good")[0]]
    )
    # Exact: the other rows are copied vocabulary embeddings.
    for row in values[2:]:
        assert np.abs(embeddings - row).max(-1).min() == 0


def test_text_init_is_cut_to_length_and_nearest_tokens_read_it_back():
    tokenizer = helpers.bert_tokenizer()
    model = helpers.MODEL_CASES["bert_classifier"].build()
    text = "great story fun music the best end"
    keras_peft.apply(
        model,
        keras_peft.PromptTuningConfig(
            length=LENGTH, init="text", init_text=text, tokenizer=tokenizer
        ),
    )
    words = text.split()
    nearest = keras_peft.nearest_tokens(model, tokenizer, k=3)
    assert len(nearest) == LENGTH
    assert [row[0] for row in nearest] == words[:LENGTH]
    assert all(len(row) == 3 for row in nearest)


def test_nearest_tokens_needs_a_prompt():
    model = helpers.MODEL_CASES["bert_backbone"].build()
    with pytest.raises(ValueError, match="no prompt"):
        keras_peft.nearest_tokens(model, helpers.bert_tokenizer())


def _classifier_with_preprocessor(sequence_length):
    backbone = helpers.MODEL_CASES["bert_backbone"].build()
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        helpers.bert_tokenizer(), sequence_length=sequence_length
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor
    )


def test_labels_init_takes_the_preprocessor_tokenizer_and_fits_text():
    model = _classifier_with_preprocessor(sequence_length=12)
    keras_peft.apply(
        model,
        keras_peft.PromptTuningConfig(
            length=LENGTH, init="labels", class_labels=["bad", "good"]
        ),
    )
    embeddings = _embeddings(model)
    tokenizer = model.preprocessor.tokenizer
    # Exact: a one-token label's mean is that token's embedding.
    np.testing.assert_array_equal(
        _prompt_values(model)[1], embeddings[_ids(tokenizer, "good")[0]]
    )
    sentences = ["good fun movie", "bad dull plot"] * 4
    labels = np.array([1, 0] * 4)
    helpers.compile(
        model,
        optimizer=keras.optimizers.Adam(0.05),
        loss=helpers.sparse_ce,
    )
    start = _prompt_values(model)
    frozen = [v.numpy() for v in model.backbone.weights if not v.trainable]
    model.fit(sentences, labels, batch_size=4, epochs=2, verbose=0)
    assert not np.array_equal(_prompt_values(model), start)
    # Exact: a frozen weight is never written.
    for value, variable in zip(
        frozen, [v for v in model.backbone.weights if not v.trainable]
    ):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize(
    "make, config, message",
    [
        (
            lambda: helpers.MODEL_CASES["bert_backbone"].build(),
            keras_peft.PromptTuningConfig(
                init="labels", class_labels=["good", "bad"], length=LENGTH
            ),
            "needs a tokenizer",
        ),
        (
            lambda: helpers.MODEL_CASES["t5_seq2seq"].build(),
            keras_peft.PromptTuningConfig(
                init="text", init_text="summarize", length=LENGTH
            ),
            "needs a tokenizer",
        ),
        (
            lambda: helpers.MODEL_CASES["bert_classifier"].build(),
            keras_peft.PromptTuningConfig(
                length=helpers.BERT["max_sequence_length"], init="random"
            ),
            "leaves no room",
        ),
        (
            lambda: _classifier_with_preprocessor(sequence_length=22),
            keras_peft.PromptTuningConfig(length=LENGTH, init="random"),
            "at most 20",
        ),
    ],
)
def test_bad_input_raises_and_leaves_the_model_unchanged(make, config, message):
    model = make()
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match=message):
        keras_peft.apply(model, config)
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_second_prompt_raises_and_leaves_the_model_unchanged():
    model = helpers.MODEL_CASES["bert_classifier"].build()
    keras_peft.apply(
        model, keras_peft.PromptTuningConfig(length=LENGTH, init="random")
    )
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="already has prompt tuning"):
        keras_peft.apply(
            model, keras_peft.PromptTuningConfig(length=2, init="random")
        )
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_inputs_longer_than_the_room_left_by_the_prompt_raise():
    model = helpers.MODEL_CASES["bert_backbone"].build()
    keras_peft.apply(
        model, keras_peft.PromptTuningConfig(length=LENGTH, init="random")
    )
    room = helpers.BERT["max_sequence_length"] - LENGTH
    model(helpers.bert_inputs(length=room))
    with pytest.raises(ValueError, match=f"at most {room} long"):
        model(helpers.bert_inputs(length=room + 1))
