"""MAM (He et al. 2022): prefix tuning at every attention and a scaled
parallel adapter at every FFN, applied as the union of the two configs."""

import keras
import numpy as np
import pytest

import keras_peft
from tests import helpers
from tests import t5_decoding

CONFIG = keras_peft.MAMConfig(prefix_length=3, bottleneck=4, reparam_hidden=8)


def test_applies_and_records_its_parts():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(model, CONFIG)
    prefix, adapter = keras_peft.applied_configs(model)
    assert prefix == keras_peft.PrefixTuningConfig(
        length=3, reparam=True, reparam_hidden=8
    )
    assert adapter == keras_peft.AdapterConfig(
        bottleneck=4, location="ffn", parallel=True, scale=4.0
    )
    assert CONFIG.parts() == (prefix, adapter)
    groups = dict(keras_peft.trainable_summary(model).groups)
    assert set(groups) == {"prefix_tuning", "adapter", "head"}


def test_t5_cached_decoding_after_training_with_multi_head_adapters():
    """keras-hub's cached decoder runs the prefixes and the FFN adapters a
    token at a time; here also a multi-head parallel adapter at each
    attention, sharing its layer with the prefix."""
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    keras_peft.apply(
        model,
        [
            CONFIG,
            keras_peft.AdapterConfig(
                bottleneck=2, location="attn", parallel=True, multi_head=True
            ),
        ],
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss=case.loss, sampler="greedy"
    )
    model.fit(case.inputs(), case.labels(), epochs=4, verbose=0)
    for variable in model.trainable_weights:
        if "up_kernel" in variable.path:
            assert np.abs(variable.numpy()).max() > 0, variable.path
    t5_decoding.assert_cached_decoding_matches(model)
    t5_decoding.assert_changes_logits(model, case.build())

    # Ejecting the prefix MLP keeps what the model computes.
    before = case.outputs(model)
    keras_peft.eject_prefix(model)
    # The ejected prefix is the MLP's output, stored: the same values.
    helpers.assert_outputs_close(case.outputs(model), before)
    t5_decoding.assert_cached_decoding_matches(model)


def test_conflict_with_an_applied_prefix_names_the_layer_and_changes_nothing():
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    keras_peft.apply(model, keras_peft.PrefixTuningConfig(length=2))
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="self_attention"):
        keras_peft.apply(model, CONFIG)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prefix_length": 0}, "MAMConfig `prefix_length`"),
        ({"bottleneck": 0}, "MAMConfig `bottleneck`"),
        ({"scale": 0}, "MAMConfig `scale`"),
        ({"reparam": 1}, "MAMConfig `reparam`"),
        ({"reparam_hidden": -1}, "MAMConfig `reparam_hidden`"),
        ({"activation": "swishy"}, "swishy"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_peft.MAMConfig(**kwargs)


def test_config_round_trips_through_json():
    config = keras_peft.MAMConfig(bottleneck=16, scale="learned", reparam=False)
    assert keras_peft.config_from_dict(config.to_dict()) == config
