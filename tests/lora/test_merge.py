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
    # Close: unmerged runs x (W + A (sB)), that kernel built per call in the
    # compute dtype; merge() stores W + cast((AB) s). They round apart.
    helpers.assert_outputs_close(case.outputs(model), expected)
    assert not np.allclose(layer.numpy(), kernel)

    keras_peft.unmerge_lora(model)
    keras_peft.unmerge_lora(model)
    # Exact: the same pass on the kernel restored bit for bit.
    helpers.assert_outputs_equal(case.outputs(model), expected)
    # Exact, not merely close: unmerge restores the kernel bit for bit.
    np.testing.assert_array_equal(layer.numpy(), kernel)


def test_merge_drops_stale_traced_functions(case):
    """predict() after merge must not run a graph traced before it."""
    model = _trained(case)
    x = case.inputs()
    expected = model.predict(x, verbose=0)
    keras_peft.merge_lora(model)
    # Close: merged kernels, against the unmerged pass (see above).
    helpers.assert_outputs_close(model.predict(x, verbose=0), expected)
    keras_peft.unmerge_lora(model)
    # Exact: the same pass on the kernel restored bit for bit.
    helpers.assert_outputs_equal(model.predict(x, verbose=0), expected)


def test_unloaded_model_saves_as_plain_base_model(case, tmp_path):
    model = _trained(case)
    expected = case.outputs(model)
    keras_peft.merge_lora(model, unload=True)
    assert not any(isinstance(v, LoRADense) for v in model._flatten_layers())
    assert keras_peft.applied_configs(model) == ()
    assert all(v.trainable for v in model.weights)
    # Close: the unloaded layers run merged kernels; expected ran unmerged.
    helpers.assert_outputs_close(case.outputs(model), expected)

    path = os.path.join(tmp_path, "merged.weights.h5")
    model.save_weights(path)
    plain = case.make()  # never adapted
    plain.load_weights(path)
    # Close: the plain model runs merged kernels; expected ran unmerged.
    helpers.assert_outputs_close(case.outputs(plain), expected)

    keras_path = os.path.join(tmp_path, "merged.keras")
    model.save(keras_path)
    restored = keras.models.load_model(keras_path)
    # Close: the restored model runs merged kernels; expected ran unmerged.
    helpers.assert_outputs_close(case.outputs(restored), expected)


def test_merge_without_lora_is_an_error():
    model = helpers.MODEL_CASES["bert_classifier"].build()
    with pytest.raises(ValueError, match="no LoRA layers"):
        keras_peft.merge_lora(model)
    with pytest.raises(ValueError, match="no LoRA layers"):
        keras_peft.unmerge_lora(model)


def test_training_a_merged_model_is_an_error(case):
    model = _trained(case)
    keras_peft.merge_lora(model)
    model.compile(optimizer="adam", loss=case.loss)
    with pytest.raises(ValueError, match="is merged"):
        model.fit(case.inputs(), case.labels(), verbose=0)


def test_loading_into_a_merged_model_swaps_the_update(case, tmp_path):
    """A merged serving model can switch tasks; the base stays intact."""
    model = _trained(case)
    base_kernels = [
        np.array(v.numpy()) for v in model.weights if not v.trainable
    ]
    keras_peft.save_adapter(model, os.path.join(tmp_path, "a"))
    expected = case.outputs(model)
    for variable in model.trainable_weights:
        variable.assign(np.zeros(variable.shape, "float32") + 0.02)
    keras_peft.merge_lora(model)
    keras_peft.load_adapter(model, os.path.join(tmp_path, "a"))
    # Close: merged kernels hold the loaded update; expected ran unmerged.
    helpers.assert_outputs_close(case.outputs(model), expected)
    keras_peft.unmerge_lora(model)
    frozen = [np.array(v.numpy()) for v in model.weights if not v.trainable]
    # Exact: unmerge restores the kept kernels, not kernel + d - d.
    for before, after in zip(base_kernels, frozen):
        np.testing.assert_array_equal(before, after)
    # Exact: the same pass on the same values.
    helpers.assert_outputs_equal(case.outputs(model), expected)
