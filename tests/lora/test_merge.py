import os

import keras
import numpy as np
import pytest

import keras_peft
from keras_peft.layers import LoRADense
from tests import helpers


def _trained(case):
    model = case.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=4, alpha=8))
    rng = np.random.default_rng(0)
    for variable in model.trainable_weights:
        variable.assign(0.1 * rng.normal(size=variable.shape).astype("float32"))
    return model


@pytest.fixture(params=["bert_classifier", "t5_seq2seq"])
def case(request):
    return helpers.MODEL_CASES[request.param]


def test_merge_and_unmerge_keep_outputs(case):
    model = _trained(case)
    expected = case.outputs(model)
    layer = next(
        v for v in model.weights if "query" in v.path and v.name == "kernel"
    )
    kernel = layer.numpy().copy()

    keras_peft.merge_lora(model)
    keras_peft.merge_lora(model)
    helpers.assert_outputs_close(case.outputs(model), expected)
    assert not np.allclose(layer.numpy(), kernel)

    keras_peft.unmerge_lora(model)
    keras_peft.unmerge_lora(model)
    helpers.assert_outputs_close(case.outputs(model), expected)
    np.testing.assert_allclose(layer.numpy(), kernel, atol=1e-6)


def test_merge_drops_stale_traced_functions(case):
    """predict() after merge must not run a graph traced before it."""
    model = _trained(case)
    x = case.inputs()
    expected = model.predict(x, verbose=0)
    keras_peft.merge_lora(model)
    helpers.assert_outputs_close(model.predict(x, verbose=0), expected)
    keras_peft.unmerge_lora(model)
    helpers.assert_outputs_close(model.predict(x, verbose=0), expected)


def test_unloaded_model_saves_as_plain_base_model(case, tmp_path):
    model = _trained(case)
    expected = case.outputs(model)
    keras_peft.merge_lora(model, unload=True)
    assert not any(isinstance(v, LoRADense) for v in model._flatten_layers())
    assert keras_peft.applied_configs(model) == ()
    assert all(v.trainable for v in model.weights)
    helpers.assert_outputs_close(case.outputs(model), expected)

    path = os.path.join(tmp_path, "merged.weights.h5")
    model.save_weights(path)
    plain = case.make()  # never adapted
    plain.load_weights(path)
    helpers.assert_outputs_close(case.outputs(plain), expected)

    keras_path = os.path.join(tmp_path, "merged.keras")
    model.save(keras_path)
    restored = keras.models.load_model(keras_path)
    helpers.assert_outputs_close(case.outputs(restored), expected)


def test_merge_without_lora_is_an_error():
    model = helpers.MODEL_CASES["bert_classifier"].build()
    with pytest.raises(ValueError, match="no LoRA layers"):
        keras_peft.merge_lora(model)
    with pytest.raises(ValueError, match="no LoRA layers"):
        keras_peft.unmerge_lora(model)
