"""Prefix tuning on BERT and T5 (Li & Liang 2021)."""

import os

import keras
import numpy as np
import pytest
import safetensors.numpy

import keras_peft
from keras_peft.layers import PrefixAttention
from keras_peft.layers import PrefixReparametrization
from tests import helpers
from tests import t5_decoding

LENGTH = 3
HIDDEN = 8


def _prefix_layers(model):
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, PrefixAttention)
    ]


def _count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(length=0),
        dict(length=True),
        dict(reparam_hidden=0),
        dict(reparam="yes"),
        dict(init="vocab"),
        dict(init="text"),
        dict(init="random", init_text="summarize"),
        dict(attention=()),
        dict(attention=("encoder", "encoder")),
        dict(attention=("self",)),
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        keras_peft.PrefixTuningConfig(**kwargs)


def test_every_bert_self_attention_gets_its_own_prefix():
    model = helpers.MODEL_CASES["bert_backbone"].build()
    keras_peft.apply(
        model, keras_peft.PrefixTuningConfig(length=LENGTH, reparam=False)
    )
    layers = _prefix_layers(model)
    assert len(layers) == helpers.BERT["num_layers"]
    assert all(layer.prefix_source is None for layer in layers)
    assert len({id(layer.prefix_key) for layer in layers}) == len(layers)


@pytest.mark.parametrize(
    "attention, expected",
    [
        (("encoder",), {"self_attention": 2}),
        (("decoder",), {"self_attention": 2}),
        (("cross",), {"cross_attention": 2}),
        (("decoder", "cross"), {"self_attention": 2, "cross_attention": 2}),
    ],
)
def test_t5_attention_kinds_are_selectable(attention, expected):
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.PrefixTuningConfig(
            length=LENGTH, reparam=False, attention=attention
        ),
    )
    layers = _prefix_layers(model)
    found = {}
    for layer in layers:
        found[layer.name] = found.get(layer.name, 0) + 1
        stack = layer.path.split("/")[-2]
        kind = (
            "encoder"
            if "encoder" in stack
            else ("cross" if layer.name == "cross_attention" else "decoder")
        )
        assert kind in attention
    assert found == expected
    d = helpers.T5["hidden_dim"]
    assert _count(model) == 2 * LENGTH * d * len(layers)


@pytest.mark.parametrize(
    "attention", [("decoder",), ("cross",), ("encoder", "cross")]
)
def test_kinds_bert_lacks_raise_and_leave_the_model_unchanged(attention):
    model = helpers.MODEL_CASES["bert_classifier"].build()
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="does not have"):
        keras_peft.apply(
            model, keras_peft.PrefixTuningConfig(attention=attention)
        )
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


@pytest.mark.parametrize("case_name", ["bert_classifier", "t5_seq2seq"])
def test_eject_keeps_outputs_and_counts_only_the_prefix(case_name, tmp_path):
    case = helpers.MODEL_CASES[case_name]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.PrefixTuningConfig(length=LENGTH, reparam_hidden=HIDDEN),
    )
    head = helpers.head_parameters(model, case)
    assert _count(model) == head + helpers.reparametrized_prefix_count(
        case, LENGTH, HIDDEN
    )
    helpers.randomize_trainable(model)
    expected = case.outputs(model)

    keras_peft.eject_prefix(model)
    # Close, though exact would hold: eject() copies the MLP's prefix.
    helpers.assert_outputs_close(case.outputs(model), expected, atol=1e-5)
    assert not any(
        isinstance(layer, PrefixReparametrization)
        for layer in model._flatten_layers()
    )
    prefix = helpers.prefix_count(case, LENGTH)
    assert _count(model) == head + prefix
    assert dict(keras_peft.trainable_summary(model).groups) == {
        "prefix_tuning": prefix,
        **({"head": head} if head else {}),
    }
    (config,) = keras_peft.applied_configs(model)
    assert config.reparam is False

    path = os.path.join(tmp_path, "adapter")
    keras_peft.save_adapter(model, path)
    saved = safetensors.numpy.load_file(
        os.path.join(path, "adapter_weights.safetensors")
    )
    sizes = sorted(int(np.prod(array.shape)) for array in saved.values())
    per_layer = (
        LENGTH
        * (helpers.BERT if case.architecture == "bert" else helpers.T5)[
            "hidden_dim"
        ]
    )
    head_sizes = sorted(
        int(np.prod(v.shape))
        for v in model.trainable_weights
        if "prefix" not in v.path
    )
    assert sizes == sorted(
        [per_layer] * (2 * helpers.attention_layer_count(case)) + head_sizes
    )
    fresh = case.build()
    keras_peft.load_adapter(fresh, path)
    # Close, though exact would hold: the MLP's prefix, copied, saved, loaded.
    helpers.assert_outputs_close(case.outputs(fresh), expected, atol=1e-5)


def test_ejected_prefix_keeps_training():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.PrefixTuningConfig(length=LENGTH, reparam_hidden=HIDDEN),
    )
    keras_peft.eject_prefix(model)
    helpers.compile(
        model, optimizer=keras.optimizers.Adam(0.05), loss=case.loss
    )
    layer = _prefix_layers(model)[0]
    start = layer.prefix_key.numpy()
    model.fit(case.inputs(), case.labels(), epochs=2, verbose=0)
    assert not np.array_equal(layer.prefix_key.numpy(), start)
    with pytest.raises(ValueError, match="no reparametrized prefix"):
        keras_peft.eject_prefix(model)


def _bert_layer0_keys_values(backbone, ids):
    """Layer 0's keys and values for `ids`, computed from the embeddings."""
    inputs = helpers.bert_inputs(batch=1, length=len(ids))
    tokens = backbone.token_embedding(ids[None])
    x = backbone.embeddings_add(
        (
            tokens,
            backbone.position_embedding(tokens),
            backbone.segment_embedding(inputs["segment_ids"]),
        )
    )
    x = backbone.embeddings_layer_norm(x)
    attention = backbone.transformer_layers[0]._self_attention_layer
    attention = getattr(attention, "base_layer", attention)
    return (
        keras.ops.convert_to_numpy(attention._key_dense(x))[0],
        keras.ops.convert_to_numpy(attention._value_dense(x))[0],
    )


def test_text_init_uses_the_frozen_models_activations():
    tokenizer = helpers.bert_tokenizer()
    case = helpers.MODEL_CASES["bert_backbone"]
    text = "summarize table"
    ids = np.asarray(tokenizer.tokenize(text)).reshape(-1)
    length = 5  # the two tokens repeated: rows 0, 2, 4 and rows 1, 3

    direct = case.build()
    keras_peft.apply(
        direct,
        keras_peft.PrefixTuningConfig(
            length=length,
            reparam=False,
            init="text",
            init_text=text,
            tokenizer=tokenizer,
        ),
    )
    keys, values = _bert_layer0_keys_values(case.build(), ids)
    layer0 = _prefix_layers(direct)[0]
    # Close: the model's own pass, against layer 0's input rebuilt here.
    np.testing.assert_allclose(
        layer0.prefix_key.numpy(), keys[[0, 1, 0, 1, 0]], atol=1e-5
    )
    np.testing.assert_allclose(
        layer0.prefix_value.numpy(), values[[0, 1, 0, 1, 0]], atol=1e-5
    )
    # Deeper layers start from their own, different activations.
    layer1 = _prefix_layers(direct)[1]
    assert not np.allclose(layer1.prefix_key.numpy(), layer0.prefix_key.numpy())

    # With the reparametrization, the MLP starts out computing the same.
    reparam = case.build()
    keras_peft.apply(
        reparam,
        keras_peft.PrefixTuningConfig(
            length=length,
            reparam_hidden=16,
            init="text",
            init_text=text,
            tokenizer=tokenizer,
        ),
    )
    # Close: a least-squares fit of the MLP only approximates the prefix.
    for mlp_layer, direct_layer in zip(
        _prefix_layers(reparam), _prefix_layers(direct)
    ):
        mlp_keys, mlp_values = mlp_layer.prefix()
        np.testing.assert_allclose(
            mlp_keys, direct_layer.prefix_key.numpy(), atol=1e-4
        )
        np.testing.assert_allclose(
            mlp_values, direct_layer.prefix_value.numpy(), atol=1e-4
        )


def test_text_init_without_tokenizer_raises_and_leaves_model_unchanged():
    model = helpers.MODEL_CASES["t5_seq2seq"].build()
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        keras_peft.apply(
            model,
            keras_peft.PrefixTuningConfig(init="text", init_text="summarize"),
        )
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_second_prefix_raises_and_leaves_the_model_unchanged():
    model = helpers.MODEL_CASES["t5_seq2seq"].build()
    keras_peft.apply(model, keras_peft.PrefixTuningConfig(length=LENGTH))
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="already wrapped"):
        keras_peft.apply(model, keras_peft.PrefixTuningConfig(length=2))
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


@pytest.mark.parametrize("reparam", [True, False])
def test_t5_cached_generation_uses_a_trained_prefix(reparam):
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.PrefixTuningConfig(
            length=LENGTH, reparam=reparam, reparam_hidden=HIDDEN
        ),
    )
    # Trained values, without the training (fitting T5 is checked in
    # test_method_matrix): the reparametrization MLP's weights move, so a
    # prefix computed once and cached would be stale.
    helpers.randomize_trainable(model)
    t5_decoding.assert_cached_decoding_matches(model)
    t5_decoding.assert_changes_logits(model)


def test_prompt_prefix_and_lora_together_on_t5(tmp_path):
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    configs = [
        keras_peft.PromptTuningConfig(length=2, init="random"),
        keras_peft.PrefixTuningConfig(length=LENGTH, reparam=False),
        keras_peft.LoRAConfig(rank=2, alpha=4),
    ]
    keras_peft.apply(model, configs)
    groups = dict(keras_peft.trainable_summary(model).groups)
    assert groups == {
        "prompt_tuning": 2 * helpers.T5["hidden_dim"],
        "prefix_tuning": helpers.prefix_count(case, LENGTH),
        "lora": helpers.lora_count(case, model, 2),
    }
    helpers.randomize_trainable(model, scale=0.3)
    t5_decoding.assert_cached_decoding_matches(model)
    expected = case.outputs(model)
    path = os.path.join(tmp_path, "adapter")
    keras_peft.save_adapter(model, path)
    fresh = case.build()
    keras_peft.load_adapter(fresh, path)
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(fresh), expected)


def test_default_bundle_holds_the_computed_prefix_of_the_paper(tmp_path):
    """By default `save_adapter` stores `2 l d` values per attention layer,
    not the MLP; `keep_prefix_mlp=True` stores the MLP, which loads as a
    reparametrized prefix that trains on; a model still carrying its MLP
    is told how to take a computed-prefix file."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.PrefixTuningConfig(length=LENGTH, reparam_hidden=HIDDEN),
    )
    helpers.randomize_trainable(model)
    expected = case.outputs(model)
    head = helpers.head_parameters(model, case)
    prefix = helpers.prefix_count(case, LENGTH)
    summary = keras_peft.trainable_summary(model)
    assert summary.computed_prefix == prefix
    assert summary.prefix_mlp == helpers.reparametrized_prefix_count(
        case, LENGTH, HIDDEN
    )
    assert summary.saved == head + prefix

    computed = os.path.join(tmp_path, "computed")
    keras_peft.save_adapter(model, computed)
    arrays = safetensors.numpy.load_file(
        os.path.join(computed, "adapter_weights.safetensors")
    )
    assert sum(a.size for a in arrays.values()) == head + prefix
    # The model saved from still trains through its MLP.
    assert keras_peft.applied_configs(model)[0].reparam is True
    assert _count(model) == summary.trainable

    with_mlp = os.path.join(tmp_path, "with_mlp")
    keras_peft.save_adapter(model, with_mlp, keep_prefix_mlp=True)
    arrays = safetensors.numpy.load_file(
        os.path.join(with_mlp, "adapter_weights.safetensors")
    )
    assert sum(a.size for a in arrays.values()) == summary.trainable
    fresh = case.build()
    keras_peft.load_adapter(fresh, with_mlp)
    assert keras_peft.applied_configs(fresh)[0].reparam is True
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(fresh), expected)

    with pytest.raises(ValueError, match=r"eject_prefix\(model\)` first"):
        keras_peft.load_adapter(fresh, computed)
    keras_peft.eject_prefix(fresh)
    keras_peft.load_adapter(fresh, computed)
    helpers.assert_outputs_close(case.outputs(fresh), expected, atol=1e-5)
    # As into a model set up for a directly trained prefix of that length.
    direct = case.build()
    keras_peft.apply(
        direct, keras_peft.PrefixTuningConfig(length=LENGTH, reparam=False)
    )
    keras_peft.load_adapter(direct, computed)
    helpers.assert_outputs_close(case.outputs(direct), expected, atol=1e-5)

    with pytest.raises(TypeError, match="keep_prefix_mlp"):
        keras_peft.save_adapter(model, computed, keep_prefix_mlp="yes")
