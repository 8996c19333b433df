import math
import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_peft
from keras_peft.layers import LoRADense
from tests import helpers


def _dense(units=6, in_dim=5, activation=None, use_bias=True):
    layer = keras.layers.Dense(units, activation=activation, use_bias=use_bias)
    layer.build((None, in_dim))
    return layer


def _einsum(equation, output_shape, input_shape, bias_axes=None):
    layer = keras.layers.EinsumDense(
        equation, output_shape=output_shape, bias_axes=bias_axes
    )
    layer.build(input_shape)
    return layer


# (equation, output_shape, input_shape, A shape, B shape) for rank 3: BERT's
# query projection, its attention output projection and a plain matmul.
EINSUM_CASES = [
    ("abc,cde->abde", (None, 2, 4), (2, 7, 8), (8, 3), (3, 2, 4)),
    ("abcd,cde->abe", (None, 8), (2, 7, 2, 4), (2, 4, 3), (3, 8)),
    ("ab,bc->ac", (6,), (2, 5), (5, 3), (3, 6)),
]


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for variable in (layer.lora_a, layer.lora_b):
        variable.assign(rng.normal(size=variable.shape).astype("float32"))


def test_wrapping_dense_starts_with_zero_effect():
    base = _dense(activation="gelu")
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    expected = helpers.numpy(base(x))
    layer = LoRADense(base_layer=base, rank=2, alpha=4)
    # Exact: B = 0 adds 0, and the base's own op runs (see below).
    np.testing.assert_array_equal(helpers.numpy(layer(x)), expected)


# Every kind of layer LoRA wraps in BERT and T5, as (layer factory, input
# shape) for a model width `d` (heads of 4).
WRAPPABLE_LAYERS = {
    "t5_attention_projector": lambda d: (
        keras.layers.Dense(d, use_bias=False),
        (4, 7, d),
    ),
    "t5_ffn_input_projector": lambda d: (
        keras.layers.Dense(2 * d, activation="relu", use_bias=False),
        (4, 7, d),
    ),
    "bert_ffn_intermediate": lambda d: (
        keras.layers.Dense(2 * d, activation="gelu"),
        (4, 7, d),
    ),
    "bert_pooled_dense": lambda d: (
        keras.layers.Dense(d, activation="tanh"),
        (4, d),
    ),
    "bert_attention_projection": lambda d: (
        keras.layers.EinsumDense(
            "abc,cde->abde", output_shape=(None, 4, d // 4), bias_axes="de"
        ),
        (4, 7, d),
    ),
    "bert_attention_output": lambda d: (
        keras.layers.EinsumDense(
            "abcd,cde->abe", output_shape=(None, d), bias_axes="e"
        ),
        (4, 7, 4, d // 4),
    ),
    "einsum_without_bias": lambda d: (
        keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 3 * d)),
        (4, 7, d),
    ),
    "einsum_with_activation": lambda d: (
        keras.layers.EinsumDense(
            "ab,bc->ac", output_shape=d, bias_axes="c", activation="gelu"
        ),
        (5, d),
    ),
}


class _DoublingDense(keras.layers.Dense):
    """A `Dense` subclass with a `call` of its own."""

    def call(self, inputs, training=None):
        return 2.0 * super().call(inputs)


WRAPPABLE_LAYERS.update(
    {
        # Sums an input axis away: LoRA takes its plain (unfused) path.
        "einsum_summing_an_axis": lambda d: (
            keras.layers.EinsumDense("abc,cd->ad", output_shape=(d,)),
            (4, 7, d),
        ),
        "dense_subclass": lambda d: (
            _DoublingDense(d, activation="relu"),
            (4, 7, d),
        ),
    }
)


def _graph_outputs(layer, x):
    """`layer(x)` inside a traced `predict` function."""
    inputs = keras.Input(x.shape[1:])
    return keras.Model(inputs, layer(inputs)).predict(x, verbose=0)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("width", [16, 384])
@pytest.mark.parametrize("kind", sorted(WRAPPABLE_LAYERS))
def test_untrained_update_returns_base_output_bit_for_bit(kind, width, policy):
    """Exact by construction: the fused pass runs the base layer's own op on
    a kernel that `+ 0` leaves bit-identical, then its bias and activation,
    so no CPU's rounding can tell the two apart (einsum and matmul kernels
    do round differently: widths of the test models and of MiniLM). The
    other paths (dropout in training, an unfusable equation, a subclass,
    merged) add an update of exactly 0 to the base's own output."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        base, shape = WRAPPABLE_LAYERS[kind](width)
        base.build(shape)
        twin, _ = WRAPPABLE_LAYERS[kind](width)  # the same layer, unwrapped
        twin.build(shape)
        twin.set_weights(base.get_weights())
        rng = np.random.default_rng(3)
        x = rng.normal(size=shape).astype("float32")
        expected = keras.ops.convert_to_numpy(twin(x))
        layer = LoRADense(base_layer=base, rank=4, alpha=8)
        dropped = LoRADense(base_layer=twin, rank=4, alpha=8, dropout=0.5)
        outputs = {
            "inference": layer(x, training=False),
            "training": layer(x, training=True),
            "dropout in training": dropped(x, training=True),
        }
        graph_expected = _graph_outputs(dropped.release(), x)
        graph = _graph_outputs(layer, x)
        layer.merge()
        outputs["merged"] = layer(x)
        for path, value in outputs.items():
            value = keras.ops.convert_to_numpy(value)
            assert value.dtype == expected.dtype
            assert np.array_equal(value, expected), (kind, path)
        assert np.array_equal(graph, graph_expected), (kind, "graph")
    finally:
        keras.config.set_dtype_policy(previous)


def test_integer_inputs_are_promoted_as_the_base_does():
    base = _dense(units=6, in_dim=5)
    x = np.arange(15, dtype="int32").reshape(3, 5)
    expected = keras.ops.convert_to_numpy(base(x))
    layer = LoRADense(base_layer=base, rank=2)
    outputs = keras.ops.convert_to_numpy(layer(x))
    assert outputs.dtype == expected.dtype == "float32"
    # Exact: an update of 0 through the base's own op on the same floats.
    np.testing.assert_array_equal(outputs, expected)
    _randomize(layer)
    a, b = layer.lora_a.numpy(), layer.lora_b.numpy()
    np.testing.assert_allclose(  # Close: NumPy sums in another order.
        helpers.numpy(layer(x)),
        expected + layer.scale * (x @ a @ b),
        rtol=1e-5,
        atol=1e-4,
    )


def test_update_is_scaled_low_rank_product_inside_activation():
    base = _dense(activation="relu")
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    kernel, bias = base.kernel.numpy(), base.bias.numpy()
    layer = LoRADense(base_layer=base, rank=2, alpha=6)
    _randomize(layer)
    a, b = layer.lora_a.numpy(), layer.lora_b.numpy()
    expected = np.maximum(x @ kernel + bias + 3.0 * (x @ a @ b), 0)
    np.testing.assert_allclose(helpers.numpy(layer(x)), expected, atol=1e-5)
    assert layer.scale == 3.0


def test_rslora_scale():
    layer = LoRADense(base_layer=_dense(), rank=4, alpha=6, use_rslora=True)
    assert layer.scale == pytest.approx(6 / math.sqrt(4))


@pytest.mark.parametrize("equation,out,inp,a_shape,b_shape", EINSUM_CASES)
def test_einsum_shapes_and_formula(equation, out, inp, a_shape, b_shape):
    base = _einsum(equation, out, inp)
    x = np.random.default_rng(0).normal(size=inp).astype("float32")
    expected = helpers.numpy(base(x))
    layer = LoRADense(base_layer=base, rank=3, alpha=3)
    # Exact: B = 0 adds 0, and the base's own einsum runs.
    np.testing.assert_array_equal(helpers.numpy(layer(x)), expected)
    assert tuple(layer.lora_a.shape) == a_shape
    assert tuple(layer.lora_b.shape) == b_shape

    _randomize(layer)
    # The update equals the base einsum with the kernel replaced by A @ B.
    delta = layer.delta_kernel()
    reference = np.einsum(equation, x, helpers.numpy(delta))
    np.testing.assert_allclose(
        helpers.numpy(layer(x)), expected + reference, atol=1e-4
    )


@pytest.mark.parametrize("equation,out,inp,a_shape,b_shape", EINSUM_CASES)
def test_merge_equals_unmerged_and_unmerge_restores(
    equation, out, inp, a_shape, b_shape
):
    base = _einsum(equation, out, inp)
    original_kernel = base.kernel.numpy().copy()
    x = np.random.default_rng(0).normal(size=inp).astype("float32")
    layer = LoRADense(base_layer=base, rank=3, alpha=5)
    _randomize(layer)
    unmerged = helpers.numpy(layer(x))
    layer.merge()
    layer.merge()  # idempotent
    assert layer.merged
    np.testing.assert_allclose(helpers.numpy(layer(x)), unmerged, atol=1e-4)
    assert not np.allclose(base.kernel.numpy(), original_kernel)
    layer.unmerge()
    layer.unmerge()  # idempotent
    np.testing.assert_allclose(base.kernel.numpy(), original_kernel, atol=1e-5)
    np.testing.assert_allclose(helpers.numpy(layer(x)), unmerged, atol=1e-5)


def test_base_is_frozen_and_only_a_b_train():
    base = _dense()
    layer = LoRADense(base_layer=base, rank=2)
    assert layer.built
    assert [v.name for v in layer.trainable_weights] == ["lora_a", "lora_b"]
    assert [v.name for v in layer.adapter_variables] == ["lora_a", "lora_b"]
    assert not base.kernel.trainable and not base.bias.trainable


def test_standalone_like_dense_with_frozen_kernel():
    layer = LoRADense(4, rank=2, activation="tanh", name="lora")
    y = layer(np.ones((2, 3), "float32"))
    assert y.shape == (2, 4)
    assert layer.compute_output_shape((2, 3)) == (2, 4)
    assert not layer.base_layer.kernel.trainable
    trainable = [v.name for v in layer.trainable_weights]
    assert trainable == ["lora_a", "lora_b"]
    np.testing.assert_allclose(
        helpers.numpy(y),
        np.tanh(np.ones((2, 3)) @ layer.base_layer.kernel.numpy()),
        atol=1e-6,
    )


def test_release_restores_base_layer():
    base = _dense(activation="relu")
    layer = LoRADense(base_layer=base, rank=2)
    assert base.activation is keras.activations.linear
    assert layer.release() is base
    assert base.activation is keras.activations.relu
    assert base.kernel.trainable and base.bias.trainable


def test_restored_wrapper_gives_the_base_its_activation_back():
    layer = LoRADense(base_layer=_dense(activation="gelu"), rank=2)
    clone = LoRADense.from_config(layer.get_config())
    assert clone.activation is keras.activations.gelu
    assert clone.base_layer.activation is keras.activations.linear
    assert clone.get_config() == layer.get_config()
    assert clone.release().activation is keras.activations.gelu


@pytest.mark.parametrize("built", [False, True])
def test_standalone_layer_round_trips_through_get_config(built):
    layer = LoRADense(4, rank=2, activation="relu", use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    if built:
        layer(x)
    clone = LoRADense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.activation is keras.activations.relu
    clone(x)
    assert clone.base_layer.bias is None
    assert clone.base_layer.units == 4


def test_config_round_trip_and_keras_file(tmp_path):
    inputs = keras.Input((5,))
    outputs = LoRADense(6, rank=2, alpha=4, dropout=0.1, activation="relu")(
        inputs
    )
    model = keras.Model(inputs, outputs)
    _randomize(model.layers[-1])
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    expected = model.predict(x, verbose=0)

    config = model.layers[-1].get_config()
    clone = LoRADense.from_config(config)
    assert clone.get_config() == config

    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.layers[-1], LoRADense)
    # Exact: a save/load round trip runs the same ops on the same values.
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)
    assert [v.name for v in restored.trainable_weights] == ["lora_a", "lora_b"]


def test_merged_layer_round_trips_as_merged(tmp_path):
    inputs = keras.Input((5,))
    outputs = LoRADense(6, rank=2)(inputs)
    model = keras.Model(inputs, outputs)
    _randomize(model.layers[-1])
    x = np.ones((2, 5), "float32")
    expected = model.predict(x, verbose=0)
    model.layers[-1].merge()
    path = os.path.join(tmp_path, "merged.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.layers[-1].merged
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-4
    )


def test_mixed_precision_keeps_lora_weights_float32():
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        base = keras.layers.Dense(4)
        base.build((None, 3))
        layer = LoRADense(base_layer=base, rank=2)
        y = layer(np.ones((2, 3), "float32"))
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    assert layer.lora_a.dtype == "float32"
    assert layer.lora_b.dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"


def test_pure_bfloat16_policy_keeps_lora_weights_float32():
    base = keras.layers.Dense(4, dtype="bfloat16")
    base.build((None, 3))
    layer = LoRADense(base_layer=base, rank=2)
    _randomize(layer)
    y = layer(np.ones((2, 3), "float32"))
    assert layer.lora_a.dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    layer.merge()
    assert keras.backend.standardize_dtype(base.kernel.dtype) == "bfloat16"


def test_dropout_applies_only_in_training():
    layer = LoRADense(base_layer=_dense(), rank=2, dropout=0.5)
    _randomize(layer)
    x = np.ones((64, 5), "float32")
    inference = helpers.numpy(layer(x, training=False))
    # Exact: the same call twice; dropout off leaves nothing random.
    np.testing.assert_array_equal(
        inference, helpers.numpy(layer(x, training=False))
    )
    assert not np.allclose(helpers.numpy(layer(x, training=True)), inference)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRADense(base_layer=_dense(), **kwargs)


def test_bad_base_layers():
    with pytest.raises(TypeError, match="Dense or keras.layers.EinsumDense"):
        LoRADense(base_layer=keras.layers.Embedding(10, 4))
    with pytest.raises(ValueError, match="units"):
        LoRADense()
    with pytest.raises(ValueError, match="not both"):
        LoRADense(4, base_layer=_dense())
    quantized = _dense()
    quantized.quantize("int8")
    with pytest.raises(ValueError, match="quantized"):
        LoRADense(base_layer=quantized)
    builtin = _dense()
    builtin.enable_lora(2)
    with pytest.raises(ValueError, match="enable_lora"):
        LoRADense(base_layer=builtin)
    with pytest.raises(ValueError, match="einsum equation"):
        LoRADense(base_layer=_einsum("abc,bcd->abd", (3, 4), (2, 3, 5)))


def test_registered_under_package():
    assert (
        keras.saving.get_registered_object("keras_peft>LoRADense") is LoRADense
    )
    assert keras_peft.layers.LoRADense is LoRADense


def test_rejected_base_layer_is_left_untouched():
    base = keras.layers.EinsumDense(
        "abc,bcd->abd", output_shape=(3, 4), activation="relu"
    )
    base.build((2, 3, 5))
    with pytest.raises(ValueError, match="einsum equation"):
        LoRADense(base_layer=base)
    assert base.activation is keras.activations.relu
    assert base.kernel.trainable


@pytest.mark.parametrize(
    "equation,out,inp",
    [case[:3] for case in EINSUM_CASES]
    + [("...a,ab->...b", None, (2, 3, 5)), ("abc,cd->ad", (6,), (2, 4, 5))],
)
def test_fused_gradients_equal_autodiff_of_low_rank_form(equation, out, inp):
    """The custom gradient of the fused forward pass is the true gradient."""
    if equation.startswith("..."):
        base = keras.layers.Dense(6, activation="tanh")
        base.build(inp)
    else:
        base = _einsum(equation, out, inp)
    layer = LoRADense(base_layer=base, rank=3, alpha=6)
    _randomize(layer, seed=3)
    x = np.random.default_rng(4).normal(size=inp).astype("float32")
    weights = np.random.default_rng(5).normal(size=layer(x).shape)
    weights = weights.astype("float32")
    equations = layer._equations(len(inp))

    def loss(x):
        return ops.sum(ops.multiply(layer(x), weights))

    def reference(x):
        # The same function written out: base(x) + scale * (x A) B.
        down = ops.einsum(equations["down"], x, layer.lora_a)
        update = ops.einsum(equations["up"], down, layer.lora_b)
        # The wrapped base computes x W + b (its activation moved to LoRA).
        pre = base(x)
        outputs = layer.activation(pre + layer.scale * update)
        return ops.sum(ops.multiply(outputs, weights))

    sources = [x, layer.lora_a, layer.lora_b, base.kernel]
    value, grads = helpers.gradients(loss, sources)
    expected_value, expected = helpers.gradients(reference, sources)
    # Close: the fused and the written-out forms sum in other orders.
    np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads[:3], expected[:3]):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)
    if equations["fusable"]:
        # The fused pass never forms the (unneeded) frozen kernel gradient.
        assert grads[3] is None or np.allclose(grads[3], 0)


def test_input_rank_that_does_not_fit_is_a_clear_error():
    einsum = LoRADense(
        base_layer=_einsum("abc,cde->abde", (None, 2, 4), (2, 7, 8))
    )
    with pytest.raises(ValueError, match="does not fit"):
        einsum._equations(2)
    with pytest.raises(ValueError, match="does not fit"):
        LoRADense(base_layer=_dense())._equations(0)
