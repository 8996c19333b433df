"""keras-peft across Keras' backends: adapters trained with TensorFlow load
under JAX and torch with the same outputs, and adapters trained there load
back under TensorFlow.

Runs under the other backend (CI's JAX and torch runs); the TensorFlow side
runs in a subprocess (`tensorflow_side.py`), on the same base weights.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_peft
from tests import helpers
from tests.backends import tensorflow_side

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "tensorflow"
    or importlib.util.find_spec("tensorflow") is None,
    reason="checks another backend against TensorFlow (run with "
    "KERAS_BACKEND=jax or torch, and TensorFlow installed)",
)
# Fitting the T5 task compiles for tens of seconds on JAX; the matrix fits
# it with every method on every backend.
FITTED = ("bert_classifier",)


def _tensorflow(*args):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "tests.backends.tensorflow_side", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout[-3000:] + result.stderr[-5000:]
    assert result.returncode == 0, output
    for model_name in tensorflow_side.CASES:
        assert f"OK {model_name}" in result.stdout, output


def _base_model(workdir, case):
    model = case.make()
    with np.load(os.path.join(workdir, f"{case.name}_base.npz")) as data:
        model.set_weights([data[f"w{i}"] for i in range(len(data.files))])
    return model


def _fit(model, case):
    # A rate per group, as the README advises for small adapters.
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(0.05), learning_rates={"lora": 0.02}, model=model
    )
    model.compile(optimizer=optimizer, loss=case.loss)
    trainable = {id(v) for v in model.trainable_weights}
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    history = model.fit(
        case.inputs(), case.labels(), epochs=3, batch_size=4, verbose=0
    )
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    for variable, old in zip(model.weights, before):
        value = keras.ops.convert_to_numpy(variable)
        if id(variable) in trainable:
            assert not np.array_equal(value, old), variable.path
        else:
            # Exact: a frozen weight is never written.
            np.testing.assert_array_equal(value, old, variable.path)


def test_adapters_cross_between_tensorflow_and_this_backend(tmp_path):
    workdir = str(tmp_path)
    backend = keras.backend.backend()
    _tensorflow("write", workdir)
    for model_name, method_name in tensorflow_side.CASES.items():
        case = helpers.MODEL_CASES[model_name]
        expected = tensorflow_side.load_outputs(
            os.path.join(workdir, f"{model_name}_outputs.npz")
        )
        # The TensorFlow adapter here. Close, not exact: TensorFlow ran
        # other kernels.
        model = _base_model(workdir, case)
        keras_peft.load_adapter(model, os.path.join(workdir, model_name))
        helpers.assert_outputs_close(case.outputs(model), expected, atol=1e-4)

        # An adapter trained here (on T5: set at random, as training would).
        model = _base_model(workdir, case)
        keras_peft.apply(model, helpers.METHOD_CASES[method_name].config(case))
        if model_name in FITTED:
            _fit(model, case)
        else:
            helpers.randomize_trainable(model, seed=1, scale=0.3)
        path = os.path.join(workdir, f"{model_name}_{backend}")
        keras_peft.save_adapter(model, path)
        outputs = case.outputs(model)
        fresh = _base_model(workdir, case)
        keras_peft.load_adapter(fresh, path)
        # Close: the trained model computes its prefix through the MLP, the
        # loaded one holds the computed prefix.
        helpers.assert_outputs_close(case.outputs(fresh), outputs, atol=1e-5)
        tensorflow_side.save_outputs(f"{path}_outputs.npz", outputs)
    # And back: TensorFlow loads them with the same outputs.
    _tensorflow("check", workdir, backend)
