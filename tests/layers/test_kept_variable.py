"""`layers.kept_variable.KeptVariable` in a `SiteHost`, and the variable
overlay it runs on (the one reach into Keras' scope internals: these tests
fail loudly if they change)."""

import threading

import keras
import numpy as np
import pytest
from keras import ops
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm

from keras_peft.layers import LoRADense
from keras_peft.layers import routing
from keras_peft.layers.kept_variable import KeptVariable
from keras_peft.layers.kept_variable import check_keepable
from keras_peft.layers.site_host import SiteHost
from keras_peft.layers.variable_overlay import overlay
from keras_peft.layers.variable_overlay import raw_value

D = 6
X = np.random.default_rng(0).normal(size=(3, 4, D)).astype("float32")
RNG = np.random.default_rng(1)


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _built(layer, shape=(None, None, D)):
    layer.build(shape)
    for variable in layer.weights:
        variable.assign(RNG.normal(size=variable.shape).astype("float32"))
    return layer


def _gelu(x):
    return _numpy(keras.activations.gelu(x))


def test_overlay_maps_a_variable_while_the_layer_runs():
    dense = _built(keras.layers.Dense(D, activation="gelu"))
    kernel, bias = _numpy(dense.kernel), _numpy(dense.bias)
    other = np.full((D,), 0.5, "float32")
    with overlay([(dense.bias, ops.convert_to_tensor(other))]):
        inside = _numpy(dense(X))
    np.testing.assert_allclose(inside, _gelu(X @ kernel + other), atol=1e-5)
    # The variable itself never changed.
    np.testing.assert_array_equal(_numpy(dense.bias), bias)
    np.testing.assert_allclose(
        _numpy(dense(X)), _gelu(X @ kernel + bias), atol=1e-5
    )


def test_overlay_defers_to_the_stateless_scope_around_it():
    """Inside a `keras.StatelessScope` (JAX's training step is one), reads
    of other variables and assignments go to the outer scope."""
    dense = _built(keras.layers.Dense(D))
    counter = keras.Variable(0.0)
    other_kernel = RNG.normal(size=(D, D)).astype("float32")
    zero_bias = np.zeros((D,), "float32")
    with keras.StatelessScope([(dense.kernel, other_kernel)]) as outer:
        with overlay([(dense.bias, ops.convert_to_tensor(zero_bias))]):
            inside = _numpy(dense(X))
            counter.assign(3.0)
        assert float(_numpy(outer.get_current_value(counter))) == 3.0
    np.testing.assert_allclose(inside, X @ other_kernel, atol=1e-5)
    # Stateless: the assignment stayed in the scope.
    assert float(_numpy(counter)) == 0.0
    # Without a scope around, an assignment inside is a real one.
    with overlay([(dense.bias, ops.convert_to_tensor(zero_bias))]):
        counter.assign(4.0)
    assert float(_numpy(counter)) == 4.0


def test_overlay_refuses_to_assign_a_mapped_variable():
    dense = _built(keras.layers.Dense(D))
    with overlay([(dense.bias, ops.zeros((D,)))]):
        with pytest.raises(ValueError, match="cannot be assigned"):
            dense.bias.assign(np.ones((D,), "float32"))


def test_raw_value_ignores_autocast():
    variable = keras.Variable(np.full((2,), 1 / 3, "float32"))
    from keras.src.backend.common.variables import AutocastScope

    with AutocastScope("bfloat16"):
        assert "bfloat16" in str(variable.value.dtype)
        value = raw_value(variable)
    assert "float32" in str(value.dtype)
    np.testing.assert_array_equal(_numpy(value), _numpy(variable))


def _kept_host(base, names, slots):
    """`base` (or what it wraps) in a host keeping `names`, with a slot
    each for adapters "a" and "b" holding random values."""
    owner = getattr(base, "wrapped_layer", None) or base
    modules = []
    for name in names:
        module = KeptVariable(name, name=f"kept_{name}")
        module.link(owner)
        module.set_slot_names(["a"])
        source = KeptVariable(name, name=f"kept_{name}_b")
        source.link(owner)
        source.own.assign(RNG.normal(size=source.own.shape).astype("float32"))
        module.add_slot("b", source)
        module.own.assign(RNG.normal(size=module.own.shape).astype("float32"))
        module.enable_switching()
        modules.append(module)
    for module in modules:
        slots[module.variable_name] = [
            np.asarray(module.slot_variables(s)[0]) for s in range(2)
        ] + [_numpy(module.base_variable)]
    return SiteHost(base, kept=modules), modules


def _with_values(base, owner, values):
    """`base`'s output on `X` with `owner`'s variables assigned `values`,
    then restored: what a model holding that adapter alone computes."""
    saved = {name: _numpy(getattr(owner, name)) for name in values}
    for name, value in values.items():
        getattr(owner, name).assign(value)
    try:
        return _numpy(base(X))
    finally:
        for name, value in saved.items():
            getattr(owner, name).assign(value)


CASES = {
    # A bias inside a nonlinear activation.
    "dense_gelu": (lambda: keras.layers.Dense(D, activation="gelu"), ["bias"]),
    "einsum": (
        lambda: keras.layers.EinsumDense(
            "abc,cde->abde", output_shape=(None, 2, 3), bias_axes="de"
        ),
        ["bias"],
    ),
    "layer_norm": (
        lambda: keras.layers.LayerNormalization(epsilon=1e-5),
        ["gamma", "beta"],
    ),
    "layer_norm_offset": (
        lambda: keras.layers.LayerNormalization(epsilon=1e-5),
        ["beta"],
    ),
    "t5_layer_norm": (lambda: T5LayerNorm(), ["weight"]),
    # The activation moved into LoRA's wrapper.
    "lora_dense_tanh": (
        lambda: LoRADense(
            base_layer=_built(keras.layers.Dense(D, activation="tanh")),
            rank=2,
        ),
        ["bias"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_adapter_and_each_example_gets_its_own_values(case):
    make, names = CASES[case]
    base = make()
    if not isinstance(base, LoRADense):
        _built(base)
    else:
        for variable in base.trainable_weights:
            variable.assign(0.3 * RNG.normal(size=variable.shape))
    owner = getattr(base, "wrapped_layer", None) or base
    slots = {}
    host, modules = _kept_host(base, names, slots)
    # Slots "a" and "b", then none: the base layer's own values.
    expected = [
        _with_values(base, owner, {n: slots[n][slot] for n in names})
        for slot in range(3)
    ]
    for slot, name in enumerate(["a", "b", "none"]):
        for module in modules:
            module.select(name)
        # The same values in place of the variables: float tolerance.
        np.testing.assert_allclose(
            _numpy(host(X)), expected[slot], atol=1e-5, err_msg=name
        )
    task_ids = np.array([1, 2, 0], "int32")
    with routing.per_example(["a", "b", "none"], task_ids):
        routed = _numpy(host(X))
    for row, task in enumerate(task_ids):
        # Each example's values applied to its row of the neutral output.
        np.testing.assert_allclose(
            routed[row], expected[task][row], atol=1e-5, err_msg=str(row)
        )


def test_a_host_with_kept_variables_round_trips_its_config():
    base = _built(keras.layers.Dense(D, activation="gelu"))
    host, _ = _kept_host(base, ["bias"], {})
    config = host.get_config()
    clone = SiteHost.from_config(config)
    (module,) = clone.kept_modules
    assert module.owner is clone.base_layer
    assert module.variable_name == "bias"
    single = SiteHost(
        _built(keras.layers.Dense(D, activation="gelu")),
        kept=[KeptVariable("bias")],
    )
    (linked,) = single.kept_modules
    linked.own.assign(np.full((D,), 0.25, "float32"))
    np.testing.assert_allclose(
        _numpy(single(X)),
        _gelu(X @ _numpy(single.base_layer.kernel) + 0.25),
        atol=1e-5,
    )


def test_a_module_of_another_layer_is_refused():
    first = _built(keras.layers.Dense(D))
    module = KeptVariable("bias")
    module.link(first)
    with pytest.raises(ValueError, match="belongs to"):
        SiteHost(_built(keras.layers.Dense(D)), kept=[module])
    with pytest.raises(ValueError, match="no variable 'beta'"):
        KeptVariable("beta").link(first)
    with pytest.raises(ValueError, match="variable attribute"):
        KeptVariable("")


@pytest.mark.parametrize(
    "layer, name",
    [
        (keras.layers.Conv1D(2, 3), "bias"),
        (keras.layers.Dense(D), "kernel"),
        (keras.layers.LayerNormalization(axis=1), "gamma"),
    ],
)
def test_only_variables_each_example_can_take_are_keepable(layer, name):
    with pytest.raises(ValueError, match="cannot each keep their own"):
        check_keepable(layer, name)
    check_keepable(keras.layers.LayerNormalization(), "gamma")


def test_no_thread_runs_the_layer_while_its_activation_is_held_back():
    """Per example, the layer runs with its activation held back; a call
    from another thread meanwhile waits, and computes with it."""
    base = _built(keras.layers.Dense(D, activation="gelu"))
    host, modules = _kept_host(base, ["bias"], {})
    for module in modules:
        module.select("a")
    expected = _numpy(host(X))
    original = base.call
    other = {}

    def switched():
        other["outputs"] = _numpy(host(X))

    def call(*args, **kwargs):
        if "thread" not in other:
            other["thread"] = threading.Thread(target=switched)
            other["thread"].start()
            # Without the lock, the other call would run now.
            other["thread"].join(timeout=0.5)
        return original(*args, **kwargs)

    base.call = call
    try:
        with routing.per_example(["a", "b", "none"], np.array([0, 1, 2])):
            host(X)
    finally:
        base.call = original
    other["thread"].join()
    np.testing.assert_allclose(other["outputs"], expected, atol=1e-6)
