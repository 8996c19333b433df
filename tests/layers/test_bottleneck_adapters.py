"""`layers.Adapter` (sequential) and `layers.ParallelAdapter`: the shared
bottleneck checked through both."""

import os

import keras
import numpy as np
import pytest

import keras_peft
from keras_peft.layers import Adapter
from keras_peft.layers import ParallelAdapter
from tests import helpers

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 12)).astype("float32")  # a sub-layer's input
H = RNG.normal(size=(2, 5, 8)).astype("float32")  # its output


def _call(layer, h=H, x=X):
    if isinstance(layer, ParallelAdapter):
        return layer(x, h)
    return layer(h)


def _randomize(layer, seed=1):
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        value = rng.normal(size=variable.shape).astype("float32")
        variable.assign(value if variable.shape else np.float32(1.5))


def _reference(layer, h=H, x=X):
    """The adapter formula, written out in NumPy."""
    source = x if isinstance(layer, ParallelAdapter) else h
    hidden = source @ layer.down_kernel.numpy() + layer.down_bias.numpy()
    hidden = keras.ops.convert_to_numpy(layer.activation(hidden))
    scale = (
        layer.learned_scale.numpy()
        if layer.learned_scale is not None
        else layer.scale
    )
    delta = hidden @ layer.up_kernel.numpy() + layer.up_bias.numpy()
    return h + scale * delta


KINDS = {
    "adapter": lambda **kw: Adapter(**kw),
    "parallel": lambda **kw: ParallelAdapter(**kw),
}


@pytest.fixture(params=sorted(KINDS))
def make(request):
    return KINDS[request.param]


@pytest.mark.parametrize(
    "policy", ["float32", "mixed_bfloat16", "bfloat16", "mixed_float16"]
)
def test_starts_with_exactly_zero_effect(make, policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = make(bottleneck=3, scale=4.0)
        expected = keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(H))
        # Large enough that float16 products overflow to inf.
        x = np.full_like(X, 300.0)
        outputs = _call(layer, h=keras.ops.cast(H, layer.compute_dtype), x=x)
        # Exact: the up-projection is zero, so h + 0 is h.
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(keras.ops.cast(outputs, "float32")),
            keras.ops.convert_to_numpy(
                keras.ops.cast(
                    keras.ops.cast(expected, layer.compute_dtype), "float32"
                )
            ),
        )
        assert {v.dtype for v in layer.weights} == {"float32"}
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("scale", [1.0, 4.0, "learned"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_output_equals_the_formula(make, scale, activation):
    layer = make(bottleneck=4, scale=scale, activation=activation)
    _call(layer)
    _randomize(layer)
    np.testing.assert_allclose(
        helpers.numpy(_call(layer)), _reference(layer), rtol=1e-5, atol=1e-5
    )


def test_parameter_count_is_two_r_d_plus_biases(make):
    layer = make(bottleneck=4)
    _call(layer)
    d_in = X.shape[-1] if isinstance(layer, ParallelAdapter) else H.shape[-1]
    d_out = H.shape[-1]
    assert layer.count_params() == d_in * 4 + 4 * d_out + 4 + d_out
    learned = make(bottleneck=4, scale="learned")
    _call(learned)
    assert learned.count_params() == layer.count_params() + 1


def test_parallel_adapter_reads_the_input_not_the_output():
    layer = ParallelAdapter(bottleneck=3)
    layer(X, H)
    _randomize(layer)
    changed = X + 1.0
    assert not np.allclose(
        helpers.numpy(layer(changed, H)), helpers.numpy(layer(X, H))
    )
    with pytest.raises(ValueError, match="width 12"):
        layer(H, H)  # the input width is fixed once built


def test_every_weight_trains_in_fit(make):
    is_parallel = make is KINDS["parallel"]
    h_in = keras.Input((5, 8))
    x_in = keras.Input((5, 12))
    layer = make(bottleneck=3, scale="learned")
    out = layer(x_in, h_in) if is_parallel else layer(h_in)
    model = keras.Model([x_in, h_in], keras.layers.Dense(1)(out))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = [v.numpy().copy() for v in layer.weights]
    model.fit([X, H], np.ones((2, 5, 1)), epochs=3, verbose=0)
    for variable, start in zip(layer.weights, before):
        assert not np.array_equal(variable.numpy(), start), variable.name


def test_config_and_keras_file_round_trip(make, tmp_path):
    is_parallel = make is KINDS["parallel"]
    h_in = keras.Input((5, 8))
    x_in = keras.Input((5, 12))
    layer = make(bottleneck=3, scale="learned", activation="gelu")
    out = layer(x_in, h_in) if is_parallel else layer(h_in)
    model = keras.Model([x_in, h_in], out)
    _randomize(layer)
    expected = model.predict([X, H], verbose=0)
    path = os.path.join(tmp_path, "adapter.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(restored.predict([X, H], verbose=0), expected)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert config["scale"] == "learned" and config["bottleneck"] == 3


def test_registered_under_package():
    for cls in (Adapter, ParallelAdapter):
        name = f"keras_peft>{cls.__name__}"
        assert keras.saving.get_registered_object(name) is cls
        assert getattr(keras_peft.layers, cls.__name__) is cls


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bottleneck": 0}, "bottleneck"),
        ({"bottleneck": -2}, "bottleneck"),
        ({"bottleneck": 2.5}, "bottleneck"),
        ({"bottleneck": True}, "bottleneck"),
        ({"bottleneck": 2, "scale": 0}, "scale"),
        ({"bottleneck": 2, "scale": -1.0}, "scale"),
        ({"bottleneck": 2, "scale": float("nan")}, "scale"),
        ({"bottleneck": 2, "scale": "learnt"}, "learnt"),
        ({"bottleneck": 2, "scale": True}, "scale"),
        ({"bottleneck": 2, "activation": "nope"}, "nope"),
    ],
)
def test_bad_arguments(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)
