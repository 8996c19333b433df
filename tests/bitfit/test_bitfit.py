"""BitFit (Ben Zaken et al. 2021): only the backbone's bias terms train."""

import os

import keras
import numpy as np
import pytest

import keras_peft
from keras_peft.core import freezing
from tests import helpers


def _bias_ids(backbone):
    return {
        id(v) for v in freezing.bias_variables(freezing.layers_of(backbone))
    }


@pytest.mark.parametrize("name", ["bert_classifier", "bert_backbone"])
def test_only_biases_and_head_train_and_outputs_are_unchanged(name):
    case = helpers.MODEL_CASES[name]
    model = case.build()
    before = case.outputs(model)
    keras_peft.apply(model, keras_peft.BitFitConfig())
    # Exact: BitFit adds no layer; the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(model), before)
    backbone = case.backbone(model)
    biases = _bias_ids(backbone)
    assert {id(v) for v in backbone.weights if v.trainable} == biases
    names = {v.name for v in backbone.weights if v.trainable}
    assert names == {"bias", "beta"}
    count = sum(int(np.prod(v.shape)) for v in backbone.trainable_weights)
    groups = dict(keras_peft.trainable_summary(model).groups)
    assert groups.pop("bitfit") == count
    assert "base" not in groups
    assert groups == (
        {"head": helpers.head_parameters(model, case)}
        if case.trainable_task
        else {}
    )


def test_fit_trains_biases_only_and_round_trips(tmp_path):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(model, keras_peft.BitFitConfig())
    helpers.compile(
        model, optimizer=keras.optimizers.Adam(0.05), loss=case.loss
    )
    trainable = {id(v) for v in model.trainable_weights}
    before = [np.array(v.numpy()) for v in model.weights]
    history = model.fit(
        case.inputs(), case.labels(), epochs=3, batch_size=4, verbose=0
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
    for variable, old in zip(model.weights, before):
        if id(variable) in trainable:
            assert not np.array_equal(variable.numpy(), old), variable.path
        else:  # exact: a frozen weight is never written
            np.testing.assert_array_equal(variable.numpy(), old)
    expected = case.outputs(model)
    path = os.path.join(tmp_path, "bitfit")
    keras_peft.save_adapter(model, path)
    fresh = case.build()
    keras_peft.load_adapter(fresh, path)
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(fresh), expected)
    assert keras_peft.applied_configs(fresh) == (keras_peft.BitFitConfig(),)


def test_targets_choose_the_layers_whose_biases_train():
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    keras_peft.apply(model, keras_peft.BitFitConfig(targets=["query"]))
    paths = {v.path for v in model.trainable_weights}
    assert paths == {
        f"transformer_layer_{i}/self_attention_layer/query/bias"
        for i in range(helpers.BERT["num_layers"])
    }


@pytest.mark.parametrize("name", ["t5_seq2seq", "t5_backbone"])
def test_t5_has_no_biases_a_clear_error_and_nothing_changes(name):
    case = helpers.MODEL_CASES[name]
    model = case.build()
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="no bias terms.*T5Backbone"):
        keras_peft.apply(model, keras_peft.BitFitConfig())
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_lora_bias_modes_on_t5_are_errors_not_silent_no_ops(bias):
    case = helpers.MODEL_CASES["t5_backbone"]
    model = case.build()
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match=f"bias='{bias}'.*no bias terms"):
        keras_peft.apply(model, keras_peft.LoRAConfig(rank=2, bias=bias))
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_bad_targets():
    with pytest.raises(ValueError, match="targets"):
        keras_peft.BitFitConfig(targets=[])
    model = helpers.MODEL_CASES["bert_backbone"].build()
    with pytest.raises(ValueError, match="nothing_here"):
        keras_peft.apply(
            model, keras_peft.BitFitConfig(targets=["nothing_here"])
        )


def test_trains_exactly_the_biases_bert_has():
    """Listed by hand from BERT's structure (not by the code under test):
    the embedding norm's offset, per layer q/k/v/output biases, both norms'
    offsets and the FFN's biases, and the pooler's bias."""
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    keras_peft.apply(model, keras_peft.BitFitConfig())
    per_layer = [
        "self_attention_layer/query/bias",
        "self_attention_layer/key/bias",
        "self_attention_layer/value/bias",
        "self_attention_layer/attention_output/bias",
        "self_attention_layer_norm/beta",
        "feedforward_layer_norm/beta",
        "feedforward_intermediate_dense/bias",
        "feedforward_output_dense/bias",
    ]
    expected = {"embeddings_layer_norm/beta", "pooled_dense/bias"} | {
        f"transformer_layer_{i}/{name}"
        for i in range(helpers.BERT["num_layers"])
        for name in per_layer
    }
    assert {v.path for v in model.weights if v.trainable} == expected
