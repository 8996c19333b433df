"""Runs keras-peft on the backend named by `KERAS_BACKEND`, in its own
process (a process has one Keras backend).

    KERAS_BACKEND=jax python -m tests.backends.check_other_backend WORKDIR

`WORKDIR` holds what `tests/backends/test_other_backends.py` wrote under
TensorFlow: each model case's base weights, an adapter trained there and
the outputs it gave. Checked here, for a BERT classifier and a T5 task with
every method: the TensorFlow adapter loads and gives the same outputs; a
fit trains the new weights and leaves the frozen ones bit-identical; an
adapter saved here loads back, and is left with its outputs for the
test to load under TensorFlow.
Prints `OK <case>` per case.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_peft  # noqa: E402
from tests import helpers  # noqa: E402

CASES = {
    "bert_classifier": "all_methods_and_bitfit",
    "t5_seq2seq": "all_methods",
}


def base_model(workdir, case):
    model = case.make()
    with np.load(os.path.join(workdir, f"{case.name}_base.npz")) as data:
        model.set_weights([data[f"w{i}"] for i in range(len(data.files))])
    return model


def check(workdir, model_name, method_name):
    case = helpers.MODEL_CASES[model_name]
    method = helpers.METHOD_CASES[method_name]
    with np.load(os.path.join(workdir, f"{model_name}_outputs.npz")) as data:
        expected = dict(data) if len(data.files) > 1 else data["outputs"]

    # The TensorFlow adapter on this backend. Close, not exact: another
    # backend runs other kernels.
    model = base_model(workdir, case)
    keras_peft.load_adapter(model, os.path.join(workdir, model_name))
    helpers.assert_outputs_close(case.outputs(model), expected, atol=1e-4)

    model = base_model(workdir, case)
    keras_peft.apply(model, method.config(case))
    # A rate per group, as the README advises for small adapters.
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(0.05), learning_rates={"lora": 0.02}, model=model
    )
    model.compile(optimizer=optimizer, loss=case.loss)
    trainable = {id(v) for v in model.trainable_weights}
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]
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

    path = os.path.join(workdir, f"{model_name}_{keras.backend.backend()}")
    keras_peft.save_adapter(model, path)
    fresh = base_model(workdir, case)
    keras_peft.load_adapter(fresh, path)
    outputs = case.outputs(model)
    # Close: the trained model computes its prefix through the MLP, the
    # loaded one holds the computed prefix.
    helpers.assert_outputs_close(case.outputs(fresh), outputs, atol=1e-5)
    if not isinstance(outputs, dict):
        outputs = {"outputs": outputs}
    np.savez(f"{path}_outputs.npz", **outputs)
    print(f"OK {model_name}", flush=True)


def main(workdir):
    for model_name, method_name in CASES.items():
        check(workdir, model_name, method_name)


if __name__ == "__main__":
    main(sys.argv[1])
