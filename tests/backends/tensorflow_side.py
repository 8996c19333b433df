"""The TensorFlow side of `test_other_backends.py`, in a process of its own
(a process has one Keras backend).

    KERAS_BACKEND=tensorflow python -m tests.backends.tensorflow_side \
        write WORKDIR
    KERAS_BACKEND=tensorflow python -m tests.backends.tensorflow_side \
        check WORKDIR BACKEND

`write` saves, per model case, the base weights, an adapter with every
method (its weights set at random, as training would) and the outputs it
gives. `check` loads the adapters that the other backend saved
(`<case>_<backend>`) and compares their outputs with the ones it recorded.
Prints `OK <case>` per case.
"""

import os
import sys

import keras
import numpy as np

import keras_peft
from tests import helpers

CASES = {
    "bert_classifier": "all_methods_and_bitfit",
    "t5_seq2seq": "all_methods",
}


def save_outputs(path, outputs):
    if not isinstance(outputs, dict):
        outputs = {"outputs": outputs}
    np.savez(path, **outputs)


def load_outputs(path):
    with np.load(path) as data:
        return dict(data) if len(data.files) > 1 else data["outputs"]


def write(workdir):
    for model_name, method_name in CASES.items():
        case = helpers.MODEL_CASES[model_name]
        model = case.build()
        np.savez(
            os.path.join(workdir, f"{model_name}_base.npz"),
            **{f"w{i}": w for i, w in enumerate(model.get_weights())},
        )
        keras_peft.apply(model, helpers.METHOD_CASES[method_name].config(case))
        helpers.randomize_trainable(model, scale=0.3)
        outputs = case.outputs(model)
        save_outputs(
            os.path.join(workdir, f"{model_name}_outputs.npz"), outputs
        )
        keras_peft.save_adapter(model, os.path.join(workdir, model_name))
        print(f"OK {model_name}", flush=True)


def check(workdir, backend):
    for model_name in CASES:
        case = helpers.MODEL_CASES[model_name]
        path = os.path.join(workdir, f"{model_name}_{backend}")
        expected = load_outputs(f"{path}_outputs.npz")
        model = case.build()
        keras_peft.load_adapter(model, path)
        # Close, not exact: the other backend ran other kernels.
        helpers.assert_outputs_close(case.outputs(model), expected, atol=1e-4)
        print(f"OK {model_name}", flush=True)


if __name__ == "__main__":
    assert keras.backend.backend() == "tensorflow", keras.backend.backend()
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3])
