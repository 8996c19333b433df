"""Slots after the first: kept in one bank per adapter variable."""

import keras
import numpy as np
import pytest

from keras_peft.layers import Adapter
from keras_peft.layers import LoRADense
from keras_peft.layers import routing
from keras_peft.layers.adapter_layer import bank_capacity
from keras_peft.layers.kept_variable import KeptVariable
from tests import helpers

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 5)).astype("float32")


def _lora(rank, seed):
    dense = keras.layers.Dense(6)
    dense.build((None, 5))
    dense.kernel.assign(np.random.default_rng(9).normal(size=(5, 6)))
    layer = LoRADense(base_layer=dense, rank=rank, alpha=2 * rank)
    rng = np.random.default_rng(seed)
    for variable in (layer.lora_a, layer.lora_b):
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return layer


def _shared(ranks):
    """A LoRA layer holding a slot per rank in `ranks` (names "a", "b",
    ...), and the layers each slot was copied from."""
    names = "abcdefghijklmnop"[: len(ranks)]
    sources = [_lora(rank, seed) for seed, rank in enumerate(ranks)]
    layer = sources[0]
    layer.set_slot_names([names[0]])
    alone = [_lora(ranks[0], 0)] + sources[1:]
    for name, source in zip(names[1:], sources[1:]):
        layer.add_slot(name, source)
    layer.enable_switching()
    return layer, dict(zip(names, alone))


def _values(layer_or_row):
    return [np.asarray(v) for v in layer_or_row]


def test_slots_after_the_first_share_one_bank_per_variable():
    """Three more slots of ranks 4, 1 and 3: one bank each for A and B,
    padded with zeros to the widest rank, made anew under the same path
    on every slot added (a new name per variable made would cost memory
    TensorFlow keeps for the process's life)."""
    layer, alone = _shared([2, 4])
    paths = [bank.path for bank in layer.bank_variables]
    assert [p.rpartition("/")[2] for p in paths] == [
        "lora_a__slots",
        "lora_b__slots",
    ]
    dense = alone["a"].base_layer
    for rank, name in ((1, "c"), (3, "d")):
        source = LoRADense(base_layer=dense, rank=rank, alpha=2 * rank)
        source.lora_b.assign(RNG.normal(size=source.lora_b.shape))
        layer.add_slot(name, source)
        alone[name] = source
        assert [bank.path for bank in layer.bank_variables] == paths
    assert len(layer.adapter_variables) == 4
    a_bank, b_bank = layer.bank_variables
    assert tuple(a_bank.shape) == (3, 5, 4)
    assert tuple(b_bank.shape) == (3, 4, 6)
    for slot, name in enumerate(layer.slot_names):
        rows = layer.slot_variables(slot)
        want = [alone[name].lora_a, alone[name].lora_b]
        assert [tuple(r.shape) for r in rows] == [tuple(w.shape) for w in want]
        # Exact: copied values.
        for got, expected in zip(_values(rows), _values(want)):
            np.testing.assert_array_equal(got, expected)
    # Exact: padding is zeros (rank 1 of at most 4).
    np.testing.assert_array_equal(np.asarray(a_bank)[1, :, 1:], 0)
    np.testing.assert_array_equal(np.asarray(b_bank)[1, 1:], 0)


def test_each_slot_computes_what_its_layer_computes_alone():
    layer, alone = _shared([2, 4, 1])
    for name in ("a", "b", "c"):
        layer.select(name)
        # Float tolerance: padded ranks sum over more (zero) components.
        np.testing.assert_allclose(
            helpers.numpy(layer(X)), helpers.numpy(alone[name](X)), atol=1e-5
        )
    ids = np.array([2, 0, 1, 3], "int32")
    with routing.per_example(["a", "b", "c", "none"], ids):
        rows = helpers.numpy(layer(X))
    base = helpers.numpy(alone["a"].base_layer(X))
    for row, task in enumerate(ids):
        expected = (
            base[row]
            if task == 3
            else helpers.numpy(alone["abc"[task]](X))[row]
        )
        np.testing.assert_allclose(rows[row], expected, atol=1e-5)


def test_a_slot_assigns_its_own_row_and_keeps_the_padding_zero():
    layer, _ = _shared([2, 4, 1])
    row = layer.slot_variables(2)[0]
    assert row.path.endswith("/lora_a__c") and row.shape == (5, 1)
    others = [np.asarray(r) for r in layer.slot_variables(1)]
    value = RNG.normal(size=(5, 1)).astype("float32")
    row.assign(value)
    # Exact: assigned values.
    np.testing.assert_array_equal(np.asarray(row), value)
    np.testing.assert_array_equal(
        np.asarray(layer.bank_variables[0])[1, :, 1:], 0
    )
    for got, expected in zip(layer.slot_variables(1), others):
        np.testing.assert_array_equal(np.asarray(got), expected)
    with pytest.raises(ValueError, match=r"shape \(5, 1\).*\(5, 4\)"):
        row.assign(np.zeros((5, 4), "float32"))


def test_removing_slots_remakes_the_banks_narrower():
    layer, alone = _shared([2, 4, 1, 3])
    paths = [bank.path for bank in layer.bank_variables]
    layer.remove_slot("b")  # The widest.
    assert layer.slot_names == ("a", "c", "d")
    assert [tuple(b.shape) for b in layer.bank_variables] == [
        (2, 5, 3),
        (2, 3, 6),
    ]
    assert [bank.path for bank in layer.bank_variables] == paths
    layer.remove_slot("a")  # Slot 0: slot 1 takes its place.
    assert layer.slot_names == ("c", "d")
    assert tuple(layer.lora_a.shape) == (5, 1)
    assert [tuple(b.shape) for b in layer.bank_variables] == [
        (1, 5, 3),
        (1, 3, 6),
    ]
    for name in ("c", "d"):
        layer.select(name)
        np.testing.assert_allclose(
            helpers.numpy(layer(X)), helpers.numpy(alone[name](X)), atol=1e-5
        )
    layer.remove_slot("c")
    assert layer.slot_names == ("d",) and layer.bank_variables == []
    assert len(layer.adapter_variables) == 2


@pytest.mark.parametrize("order", [(1, 3, 2), (2, 4, 2)], ids=str)
def test_slots_moving_keep_the_layer_on_its_adapter(order):
    """Removing or reordering slots (of other ranks, or equal ones) moves
    the active one: the layer keeps computing with the adapter it
    computed with, and with none once that one is removed."""
    layer, alone = _shared(list(order))
    base = helpers.numpy(alone["a"].base_layer(X))
    layer.select("c")
    layer.order_slots(["c", "b", "a"])
    assert layer.slot_names == ("c", "b", "a")
    np.testing.assert_allclose(
        helpers.numpy(layer(X)), helpers.numpy(alone["c"](X)), atol=1e-5
    )
    layer.remove_slot("b")
    np.testing.assert_allclose(
        helpers.numpy(layer(X)), helpers.numpy(alone["c"](X)), atol=1e-5
    )
    layer.remove_slot("c")  # Slot 0, the active one.
    assert layer.slot_names == ("a",)
    # Exact: no slot adds zeros.
    np.testing.assert_array_equal(helpers.numpy(layer(X)), base)
    layer.select("a")
    np.testing.assert_allclose(
        helpers.numpy(layer(X)), helpers.numpy(alone["a"](X)), atol=1e-5
    )


def test_a_bank_gets_gradients_only_in_the_active_slots_row():
    layer, _ = _shared([2, 4, 1])
    layer.select("b")

    def loss(*_):
        return keras.ops.sum(keras.ops.square(layer(X)))

    banks = layer.bank_variables
    _, grads = helpers.gradients(loss, banks)
    rows = layer.slot_variables(1)
    for bank, grad, row in zip(banks, grads, rows):
        grad = np.asarray(grad)
        mask = np.zeros(bank.shape, bool)
        mask[row.index] = True
        assert np.all(grad[mask] != 0), bank.path
        # Exact: other slots and the padding take no part.
        np.testing.assert_array_equal(grad[~mask], 0)


def test_a_banks_padding_takes_no_gradient_and_never_trains():
    """Adapters of widths 4, 2 and 3 with sigmoid units: the padding of
    the narrower slots computes `sigmoid(0) = 0.5` in its hidden units,
    yet takes exactly zero gradient, so that no optimizer moves it."""
    h = RNG.normal(size=(3, 6)).astype("float32")
    layers = {}
    for name, width in (("a", 4), ("b", 2), ("c", 3)):
        adapter = Adapter(bottleneck=width, activation="sigmoid")
        adapter.build((None, 6))
        adapter.up_kernel.assign(RNG.normal(size=adapter.up_kernel.shape))
        layers[name] = adapter
    layer = layers["a"]
    layer.set_slot_names(["a"])
    for name in ("b", "c"):
        layer.add_slot(name, layers[name])
    layer.enable_switching()
    layer.select("b")
    np.testing.assert_allclose(
        helpers.numpy(layer(h)), helpers.numpy(layers["b"](h)), atol=1e-5
    )

    def loss(*_):
        return keras.ops.sum(keras.ops.square(layer(h)))

    banks = layer.bank_variables
    _, grads = helpers.gradients(loss, banks)
    for bank, grad, row in zip(banks, grads, layer.slot_variables(1)):
        mask = np.zeros(bank.shape, bool)
        mask[row.index] = True
        # Exact: the padding and slot "c" take no part.
        np.testing.assert_array_equal(np.asarray(grad)[~mask], 0)


def test_a_bank_has_room_for_more_slots_that_takes_no_part():
    """Past 8 slots a bank grows 8 rows at a time (each bank shape made
    costs TensorFlow memory for the process's life): 100 adapters make 20
    shapes. The rows to spare stay zero, take no gradient, and every slot
    and "no slot" compute as before."""
    assert bank_capacity(3) == 3 and bank_capacity(9) == 16
    assert len({bank_capacity(count) for count in range(1, 100)}) == 20
    ranks = [2, 4, 1, 3, 2, 4, 1, 3, 2, 4, 1]
    layer, alone = _shared(ranks)
    assert layer.slot_names == tuple("abcdefghijk")
    a_bank, b_bank = layer.bank_variables
    assert tuple(a_bank.shape) == (16, 5, 4)
    # Exact: spare rows are zeros.
    np.testing.assert_array_equal(np.asarray(a_bank)[10:], 0)
    for name in ("a", "c", "k"):
        layer.select(name)
        np.testing.assert_allclose(
            helpers.numpy(layer(X)), helpers.numpy(alone[name](X)), atol=1e-5
        )
    ids = np.array([10, 11, 3, 0], "int32")
    with routing.per_example(list("abcdefghijk") + ["none"], ids):
        rows = helpers.numpy(layer(X))
    base = helpers.numpy(alone["a"].base_layer(X))
    np.testing.assert_allclose(rows[1], base[1], atol=1e-5)
    np.testing.assert_allclose(
        rows[0], helpers.numpy(alone["k"](X))[0], atol=1e-5
    )

    def loss(*_):
        with routing.per_example(list("abcdefghijk") + ["none"], ids):
            return keras.ops.sum(keras.ops.square(layer(X)))

    _, grads = helpers.gradients(loss, [a_bank, b_bank])
    for grad in grads:
        # Exact: rows to spare take no part.
        np.testing.assert_array_equal(np.asarray(grad)[10:], 0)
        assert np.any(np.asarray(grad)[9])  # Slot "k".
    layer.remove_slot("k")
    layer.remove_slot("j")
    assert tuple(layer.bank_variables[0].shape) == (8, 5, 4)


def test_a_kept_variable_past_its_last_slot_reads_the_base_value():
    """With rows to spare in its bank, an adapter keeping no copy still
    computes with the base variable's value, not a spare row's zeros."""
    dense = keras.layers.Dense(4)
    dense.build((None, 3))
    dense.bias.assign(RNG.normal(size=4))
    kept = KeptVariable("bias")
    kept.link(dense)
    kept.set_slot_names(["s0"])
    values = {}
    for slot in range(1, 10):
        source = KeptVariable("bias")
        source.link(dense)
        source.own.assign(RNG.normal(size=4))
        values[f"s{slot}"] = np.asarray(source.own)
        kept.add_slot(f"s{slot}", source)
    kept.enable_switching()
    assert tuple(kept.bank_variables[0].shape) == (16, 4)
    names = [f"s{slot}" for slot in range(10)] + ["other"]
    with routing.per_example(names, np.array([10, 9, 10], "int32")):
        value = helpers.numpy(kept.value())
    # Exact: values copied and gathered.
    np.testing.assert_array_equal(value[0], np.asarray(dense.bias))
    np.testing.assert_array_equal(value[1], values["s9"])
    kept.select("other")
    np.testing.assert_array_equal(
        helpers.numpy(kept.value()), np.asarray(dense.bias)
    )
