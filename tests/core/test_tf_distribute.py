"""keras-peft under tf.distribute (TensorFlow backend only)."""

import keras
import numpy as np
import pytest

import keras_peft
from tests import helpers

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow only"
)
CASE = helpers.MODEL_CASES["bert_classifier"]


def _strategy():
    return tf.distribute.MirroredStrategy(["CPU:0"])


@pytest.mark.parametrize("apply_inside_scope", [True, False])
def test_fit_under_mirrored_strategy(apply_inside_scope):
    strategy = _strategy()
    with strategy.scope():
        model = CASE.build()
        if apply_inside_scope:
            keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    if not apply_inside_scope:
        # Outside the scope, keras-peft enters the model's strategy itself.
        keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    lora = model.backbone.transformer_layers[0]._self_attention_layer
    assert isinstance(
        lora._query_dense.lora_a.value, tf.distribute.DistributedValues
    )
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss=CASE.loss)
    frozen = lora._key_dense.kernel
    before = np.array(frozen.numpy())
    b_before = np.array(lora._query_dense.lora_b.numpy())
    model.fit(CASE.inputs(), CASE.labels(), epochs=2, verbose=0)
    # Exact: a frozen weight is never written.
    np.testing.assert_array_equal(frozen.numpy(), before)
    assert not np.array_equal(lora._query_dense.lora_b.numpy(), b_before)


def test_apply_inside_another_strategy_is_an_error():
    model = CASE.build()
    before = helpers.snapshot(model)
    with _strategy().scope():
        with pytest.raises(ValueError, match="scope the model was built in"):
            keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_named_adapters_made_deleted_and_ejected_stay_distributed():
    """Every variable slots are kept in (banks remade when an adapter is
    added or deleted, prefixes made by `eject_prefix`) is made in the
    model's strategy, outside its scope too, and the model trains."""
    from keras_peft.core import switching

    with _strategy().scope() as strategy:
        model = CASE.build()
    for name in ("a", "b", "c"):
        keras_peft.apply(
            model,
            [
                keras_peft.LoRAConfig(rank=2),
                keras_peft.PrefixTuningConfig(length=2, reparam_hidden=4),
            ],
            name=name,
        )
    keras_peft.delete_adapter(model, "b")
    keras_peft.eject_prefix(model)
    # Slot 1 of each layer: a row of its banks.
    keras_peft.set_active(model, "c")
    layers = switching.adapter_layers(model)
    banks = [bank for layer in layers for bank in layer.bank_variables]
    assert banks
    for variable in banks + [v for layer in layers for v in layer.weights]:
        assert isinstance(variable.value, tf.distribute.DistributedValues), (
            variable.path
        )
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss=CASE.loss)
    before = [np.array(bank.numpy()) for bank in banks]
    model.fit(CASE.inputs(), CASE.labels(), epochs=1, verbose=0)
    assert any(
        not np.array_equal(bank.numpy(), value)
        for bank, value in zip(banks, before)
    )
