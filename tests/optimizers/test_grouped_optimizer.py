"""GroupedOptimizer: each variable group at its own learning rate."""

import json
import os

import keras
import numpy as np
import pytest

import keras_peft
from tests import helpers

TENSORFLOW = keras.backend.backend() == "tensorflow"
tensorflow_only = pytest.mark.skipif(
    not TENSORFLOW, reason="a TensorFlow graph, XLA step or tf.train.Checkpoint"
)

BASE_RATE, OWN_RATE = 1e-3, 2e-2


def _plain_model():
    """A plain functional Keras model: groups "lora" and "base"."""
    inputs = keras.Input((6,))
    hidden = keras_peft.layers.LoRADense(
        units=8, rank=2, activation="relu", name="lora_dense"
    )(inputs)
    outputs = keras.layers.Dense(3, name="out")(hidden)
    return keras.Model(inputs, outputs)


def _bert(method):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(model, helpers.METHOD_CASES[method].config(case))
    return model


# A model maker, and the group the tests give its own rate.
MODELS = {
    "plain": (_plain_model, "lora"),
    "bert_prompt_tuning": (lambda: _bert("prompt_tuning"), "head"),
    "bert_lora": (lambda: _bert("lora"), "head"),
}


def _model_and_twin(kind):
    make, group = MODELS[kind]
    model, twin = make(), make()
    twin.set_weights(model.get_weights())
    return model, twin, group


def _gradients(variables, steps, scale=1.0):
    rng = np.random.default_rng(0)
    return [
        [
            keras.ops.convert_to_tensor(
                scale * rng.normal(size=v.shape).astype("float32")
            )
            for v in variables
        ]
        for _ in range(steps)
    ]


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(OWN_RATE, 1, 0.5)


def _adam(rate):
    return keras.optimizers.Adam(rate)


# Model, inner optimizer, the own rate (or a schedule), whether the grouped
# step runs under XLA.
CASES = {
    "adam": ("plain", _adam, OWN_RATE, False),
    "adam_xla": ("plain", _adam, OWN_RATE, True),
    "adam_schedule_xla": ("plain", _adam, _schedule, True),
    "adamw": (
        "plain",
        lambda rate: keras.optimizers.AdamW(rate, weight_decay=0.1),
        OWN_RATE,
        False,
    ),
    "sgd_clipnorm": (
        "plain",
        lambda rate: keras.optimizers.SGD(rate, momentum=0.9, clipnorm=0.5),
        OWN_RATE,
        False,
    ),
    "adam_accumulate": (
        "plain",
        lambda rate: keras.optimizers.Adam(rate, gradient_accumulation_steps=2),
        OWN_RATE,
        False,
    ),
    "bert_prompt_tuning": ("bert_prompt_tuning", _adam, OWN_RATE, False),
    "bert_lora": ("bert_lora", _adam, OWN_RATE, False),
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=tensorflow_only) if CASES[c][3] else c
        for c in sorted(CASES)
    ],
)
def test_matches_one_inner_optimizer_per_group(case):
    kind, make, rate, xla = CASES[case]
    rate = rate() if callable(rate) else rate
    model, reference, own = _model_and_twin(kind)
    optimizer = keras_peft.GroupedOptimizer(
        make(BASE_RATE), learning_rates={own: rate}, model=model
    )
    groups = keras_peft.variable_groups(reference)
    assert own in groups and len(groups) == 2
    plain = {g: make(rate if g == own else BASE_RATE) for g in groups}

    variables = model.trainable_variables
    position = {id(v): i for i, v in enumerate(reference.trainable_variables)}
    optimizer.build(variables)

    def step(grads):
        optimizer.apply(grads, variables)

    if TENSORFLOW:
        import tensorflow as tf

        step = tf.function(step, jit_compile=xla)
    for grads in _gradients(variables, steps=4):
        step(grads)
        for group, group_variables in groups.items():
            plain[group].apply(
                [grads[position[id(v)]] for v in group_variables],
                group_variables,
            )

    # Float tolerance: the same update rule on the same gradients, but on
    # TensorFlow the grouped step runs as a graph (under XLA in some cases),
    # the reference eagerly; XLA fuses the element-wise update and rounds
    # differently (by an ulp, measured).
    for x, y in zip(_values(variables), _values(reference.trainable_variables)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert int(optimizer.iterations) == int(plain[own].iterations)


def test_global_clipnorm_and_loss_scale_span_all_groups():
    model, reference, own = _model_and_twin("plain")

    def make():
        return keras.optimizers.Adam(
            BASE_RATE, global_clipnorm=0.5, loss_scale_factor=4.0
        )

    # Every group at the default rate: one plain Adam over all variables is
    # then the same optimizer, and clips by the norm of all gradients.
    optimizer = keras_peft.GroupedOptimizer(
        make(), learning_rates={own: BASE_RATE}, model=model
    )
    plain = make()
    for grads in _gradients(model.trainable_variables, steps=3, scale=10.0):
        optimizer.apply(grads, model.trainable_variables)
        plain.apply(grads, reference.trainable_variables)
    # Float tolerance: Keras' clipping formula, computed here rather than
    # by Keras.
    for x, y in zip(
        _values(model.trainable_variables),
        _values(reference.trainable_variables),
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_variable_groups_are_trainable_summary_groups(method_case):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(model, method_case.config(case))
    groups = keras_peft.variable_groups(model)
    sizes = [
        (group, sum(int(np.prod(v.shape)) for v in variables))
        for group, variables in groups.items()
    ]
    assert sizes == list(keras_peft.trainable_summary(model).groups)
    assert set(method_case.methods) <= set(groups)
    grouped = sorted(id(v) for vs in groups.values() for v in vs)
    assert grouped == sorted(id(v) for v in model.trainable_variables)


@pytest.fixture
def dtype_policy():
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


# Model, the group held at rate 0, how `fit` runs, dtype policy. The graph
# and XLA cases use the small plain model: tracing BERT takes most of a
# test's time, and the optimizer's graph does not depend on the model.
FIT_CASES = {
    "plain_graph": ("plain", "lora", "graph", "float32"),
    "plain_xla_bf16": ("plain", "base", "xla", "mixed_bfloat16"),
    "bert_prompt_tuning_bf16": (
        "bert_prompt_tuning",
        "head",
        "eager",
        "mixed_bfloat16",
    ),
    "bert_lora": ("bert_lora", "lora", "eager", "float32"),
}


@pytest.mark.parametrize("fit_case", sorted(FIT_CASES))
def test_fit_trains_each_group_at_its_rate(fit_case, dtype_policy):
    kind, still, mode, policy = FIT_CASES[fit_case]
    dtype_policy(policy)
    model = MODELS[kind][0]()
    groups = keras_peft.variable_groups(model)
    (moving,) = set(groups) - {still}
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(BASE_RATE),
        learning_rates={still: 0.0, moving: OWN_RATE},
        model=model,
    )
    if kind == "plain":
        rng = np.random.default_rng(1)
        x = rng.normal(size=(4, 6)).astype("float32")
        y, loss = rng.normal(size=(4, 3)).astype("float32"), "mse"
    else:
        case = helpers.MODEL_CASES["bert_classifier"]
        x, y, loss = case.inputs(), case.labels(), case.loss
    model.compile(
        optimizer=optimizer,
        loss=loss,
        run_eagerly=mode == "eager",
        # JAX always compiles with XLA, torch runs eagerly ("auto").
        jit_compile=mode == "xla" if TENSORFLOW else "auto",
    )
    before = {g: _values(vs) for g, vs in groups.items()}
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"]).all()
    # Exact: Adam at rate 0 subtracts exactly 0.
    for x, y in zip(before[still], _values(groups[still])):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(before[moving], _values(groups[moving])):
        assert not np.array_equal(x, y)
    assert int(optimizer.iterations) == 2


def _compiled_plain_model():
    model = _plain_model()
    model.compile(
        optimizer=keras_peft.GroupedOptimizer(
            keras.optimizers.Adam(BASE_RATE),
            learning_rates={"lora": _schedule()},
            model=model,
        ),
        loss="mse",
    )
    return model


def _fit(model, steps):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2 * steps, 6)).astype("float32")
    y = rng.normal(size=(2 * steps, 3)).astype("float32")
    # Eagerly: tracing would take most of the test's time.
    model.run_eagerly = True
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)


def _save_weights(model, path):
    model.save_weights(path + ".weights.h5")
    fresh = _compiled_plain_model()
    # As for any Keras optimizer: only a built one loads its variables.
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path + ".weights.h5")
    return fresh


def _tf_checkpoint(model, path):
    import tensorflow as tf

    tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(path)
    fresh = _compiled_plain_model()
    fresh.optimizer.build(fresh.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer)
    checkpoint.read(path).assert_consumed()
    return fresh


def _keras_file(model, path):
    model.save(path + ".keras")
    return keras.models.load_model(path + ".keras")


@pytest.mark.parametrize(
    "save_and_restore",
    [
        _save_weights,
        pytest.param(_tf_checkpoint, marks=tensorflow_only),
        _keras_file,
    ],
)
def test_resumed_training_equals_uninterrupted(save_and_restore, tmp_path):
    model = _compiled_plain_model()
    _fit(model, steps=2)
    restored = save_and_restore(model, os.path.join(tmp_path, "state"))
    assert isinstance(restored.optimizer, keras_peft.GroupedOptimizer)
    assert int(restored.optimizer.iterations) == 2
    _fit(model, steps=2)
    _fit(restored, steps=2)
    # Exact: the same training graph on the same restored values.
    for x, y in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_config_round_trip():
    model = _plain_model()
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.AdamW(BASE_RATE, weight_decay=0.01, clipnorm=1.0),
        learning_rates={"lora": _schedule(), "base": 5e-3},
        model=model,
        name="grouped",
    )
    config = json.loads(json.dumps(optimizer.get_config()))
    assert config["groups"] == {
        "lora": ["lora_dense/lora_a", "lora_dense/lora_b"],
        "base": ["out/kernel", "out/bias"],
    }
    restored = keras_peft.GroupedOptimizer.from_config(config)
    assert restored.get_config() == config
    # Registered: Keras finds the class by its serialized name.
    restored = keras.optimizers.deserialize(
        json.loads(json.dumps(keras.optimizers.serialize(optimizer)))
    )
    assert isinstance(restored, keras_peft.GroupedOptimizer)
    assert restored.get_config() == config
    restored.build(model.trainable_variables)
    rate = restored.optimizers["lora"].learning_rate
    assert keras.ops.convert_to_numpy(rate) == np.float32(_schedule()(0))


def test_learning_rate_reads_the_default_and_cannot_be_set():
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(BASE_RATE),
        learning_rates={"lora": OWN_RATE},
        model=_plain_model(),
    )
    rate = keras.ops.convert_to_numpy(optimizer.learning_rate)
    assert rate == np.float32(BASE_RATE)
    with pytest.raises(AttributeError, match="LearningRateSchedule"):
        optimizer.learning_rate = 0.1


def test_unknown_group_names_the_groups_present():
    model = _bert("prompt_tuning")
    with pytest.raises(ValueError, match=r"\['heads'\].*'prompt_tuning'"):
        keras_peft.GroupedOptimizer(
            keras.optimizers.Adam(BASE_RATE),
            learning_rates={"heads": 1e-2},
            model=model,
        )
    model.output_dense.trainable = False  # a frozen head is no group
    with pytest.raises(ValueError, match=r"\['head'\]"):
        keras_peft.GroupedOptimizer(
            keras.optimizers.Adam(BASE_RATE),
            learning_rates={"head": 1e-2},
            model=model,
        )


@pytest.mark.parametrize(
    "rate", [-1e-3, float("nan"), float("inf"), "1e-2", True, None]
)
def test_bad_rate(rate):
    with pytest.raises(ValueError, match="'lora'"):
        keras_peft.GroupedOptimizer(
            keras.optimizers.Adam(BASE_RATE),
            learning_rates={"lora": rate},
            model=_plain_model(),
        )


def test_unknown_variable():
    model = _plain_model()
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(BASE_RATE),
        learning_rates={"lora": OWN_RATE},
        model=model,
    )
    stray = keras.Variable(np.zeros(3), name="stray")
    with pytest.raises(ValueError, match="'stray'.*'lora', 'base'"):
        optimizer.build([*model.trainable_variables, stray])


@pytest.mark.parametrize(
    "inner, arguments, message",
    [
        (lambda: "adam", {}, "plain Keras optimizer"),
        (
            lambda: keras.optimizers.LossScaleOptimizer(_adam(BASE_RATE)),
            {},
            "plain Keras optimizer",
        ),
        (
            lambda: keras.optimizers.Adam(
                global_clipnorm=1.0, gradient_accumulation_steps=2
            ),
            {},
            "global_clipnorm",
        ),
        (lambda: _adam(BASE_RATE), {"groups": {}}, "exactly one"),
        (lambda: _adam(BASE_RATE), {"model": None}, "exactly one"),
        (lambda: _adam(BASE_RATE), {"learning_rates": 1e-2}, "dict"),
    ],
)
def test_bad_arguments(inner, arguments, message):
    arguments = {
        "learning_rates": {},
        "model": _plain_model(),
        **arguments,
    }
    with pytest.raises(ValueError, match=message):
        keras_peft.GroupedOptimizer(inner(), **arguments)


def test_built_inner_optimizer():
    model = _plain_model()
    inner = _adam(BASE_RATE)
    inner.build(model.trainable_variables)
    with pytest.raises(ValueError, match="already built"):
        keras_peft.GroupedOptimizer(inner, {}, model=model)


def test_exclude_from_weight_decay_reaches_every_group():
    model = _plain_model()
    model.set_weights([np.ones_like(w) for w in model.get_weights()])
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.AdamW(BASE_RATE, weight_decay=0.5),
        learning_rates={"lora": OWN_RATE},
        model=model,
    )
    optimizer.exclude_from_weight_decay(var_names=["lora_b", "bias"])
    variables = model.trainable_variables
    # Zero gradients: Adam's step is exactly 0, only weight decay acts.
    optimizer.apply(
        [keras.ops.zeros(v.shape, "float32") for v in variables], variables
    )
    decayed = {v.path: not np.all(v.numpy() == 1.0) for v in variables}
    assert decayed == {
        "lora_dense/lora_a": True,
        "lora_dense/lora_b": False,
        "out/kernel": True,
        "out/bias": False,
    }


def test_a_group_without_gradients_is_skipped_and_counts_the_step():
    model, reference, own = _model_and_twin("plain")
    optimizer = keras_peft.GroupedOptimizer(
        _adam(BASE_RATE), learning_rates={own: OWN_RATE}, model=model
    )
    plain = _adam(BASE_RATE)
    variables = model.trainable_variables
    base = keras_peft.variable_groups(reference)["base"]
    for grads in _gradients(variables, steps=2):
        grads = [
            None if v.path.startswith("lora_dense") else g
            for g, v in zip(grads, variables)
        ]
        with pytest.warns(UserWarning, match="lora_dense/lora_a"):
            optimizer.apply(grads, variables)
        plain.apply([g for g in grads if g is not None], base)
    # Guards the one reach into Keras' private state (`_iterations`).
    assert [int(o.iterations) for o in optimizer.optimizers.values()] == [2, 2]
    # Exact: the same ops on the same values, both eager.
    for x, y in zip(
        _values(keras_peft.variable_groups(model)["base"]), _values(base)
    ):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="No gradients"):
        optimizer.apply([None] * len(variables), variables)
