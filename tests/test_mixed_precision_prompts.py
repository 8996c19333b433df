"""Prompt and prefix tuning under the mixed_bfloat16 policy."""

import keras
import numpy as np
import pytest

import keras_peft
from tests import helpers


@pytest.mark.parametrize("case_name", ["bert_classifier", "t5_seq2seq"])
@pytest.mark.parametrize(
    "config",
    [
        keras_peft.PromptTuningConfig(length=4, init="random"),
        keras_peft.PrefixTuningConfig(length=3, reparam_hidden=8),
    ],
    ids=["prompt", "prefix"],
)
def test_fit_under_mixed_bfloat16(case_name, config):
    case = helpers.MODEL_CASES[case_name]
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = case.make()
        keras_peft.apply(model, config)
        helpers.compile(
            model, optimizer=keras.optimizers.Adam(0.05), loss=case.loss
        )
        frozen = [
            (v, np.array(v.numpy())) for v in model.weights if not v.trainable
        ]
        new = [
            v
            for v in model.trainable_weights
            if "prompt" in v.path or "prefix" in v.path
        ]
        starts = [np.array(v.numpy()) for v in new]
        outputs = model(case.inputs())
        history = model.fit(case.inputs(), case.labels(), epochs=3, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert model.backbone.dtype_policy.name == "mixed_bfloat16"
    assert np.isfinite(keras.ops.convert_to_numpy(outputs)).all()
    assert new and {str(v.dtype) for v in new} == {"float32"}
    assert np.isfinite(history.history["loss"]).all()
    for variable, start in zip(new, starts):
        assert not np.array_equal(variable.numpy(), start)
    for variable, value in frozen:  # exact: frozen weights are never written
        np.testing.assert_array_equal(variable.numpy(), value)
