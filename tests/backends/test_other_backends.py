"""keras-peft on Keras' other backends: adapters trained with TensorFlow
load there, and apply, fit, save and load work there too."""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_peft
from tests import helpers
from tests.backends import check_other_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _write_tensorflow_side(workdir):
    for model_name, method_name in check_other_backend.CASES.items():
        case = helpers.MODEL_CASES[model_name]
        model = case.build()
        np.savez(
            os.path.join(workdir, f"{model_name}_base.npz"),
            **{f"w{i}": w for i, w in enumerate(model.get_weights())},
        )
        keras_peft.apply(model, helpers.METHOD_CASES[method_name].config(case))
        helpers.randomize_trainable(model, scale=0.3)
        outputs = case.outputs(model)
        if not isinstance(outputs, dict):
            outputs = {"outputs": outputs}
        np.savez(os.path.join(workdir, f"{model_name}_outputs.npz"), **outputs)
        keras_peft.save_adapter(model, os.path.join(workdir, model_name))


@pytest.mark.parametrize("backend", ["jax"])
def test_tensorflow_adapters_load_and_methods_train_on(backend, tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the adapters to load are saved under TensorFlow")
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    _write_tensorflow_side(str(tmp_path))
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-m", "tests.backends.check_other_backend", tmp_path],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout[-3000:] + result.stderr[-5000:]
    assert result.returncode == 0, output
    for model_name in check_other_backend.CASES:
        assert f"OK {model_name}" in result.stdout, output
        # And back: the adapter trained there loads here.
        case = helpers.MODEL_CASES[model_name]
        path = os.path.join(tmp_path, f"{model_name}_{backend}")
        with np.load(f"{path}_outputs.npz") as data:
            expected = dict(data) if len(data.files) > 1 else data["outputs"]
        model = case.build()
        keras_peft.load_adapter(model, path)
        # Close, not exact: another backend ran other kernels.
        helpers.assert_outputs_close(case.outputs(model), expected, atol=1e-4)
