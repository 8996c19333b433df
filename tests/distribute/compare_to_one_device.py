"""Trains `examples/train_distributed.py`'s model on one device, then over
two, in one process; prints the largest differences of the trained
variables as JSON.

    python tests/distribute/compare_to_one_device.py mirrored lora
    KERAS_BACKEND=jax \\
      XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
      python tests/distribute/compare_to_one_device.py data_parallel lora

`mirrored` splits the CPU into two logical TensorFlow devices; JAX gets its
two from `XLA_FLAGS`, which must be set before it starts.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import train_distributed  # noqa: E402

import keras_peft  # noqa: E402


def main(strategy, method):
    if strategy == "mirrored":
        train_distributed.split_cpu(2)
    results = {}
    for name in ("one", strategy):
        args = train_distributed.parse_args(
            [
                "--strategy",
                name,
                "--method",
                method,
                "--train",
                "96",
                "--batch",
                "16",
                "--epochs",
                "2",
                "--steps-per-execution",
                str(_steps_per_execution(strategy)),
                "--dropout",
                "0",
                "--verbose",
                "0",
            ]
        )
        model, history, _, _ = train_distributed.train(args)
        results[name] = {
            "paths": [v.path for v in model.trainable_weights],
            "weights": [
                keras.ops.convert_to_numpy(v) for v in model.trainable_weights
            ],
            "loss": history.history["loss"],
            "trainable": keras_peft.trainable_summary(model).trainable,
            "devices": _devices(model),
        }
    one, many = results["one"], results[strategy]
    # The same variables in the same order (a second model's layer names
    # get a suffix: compared after the first slash).
    assert [p.split("/", 1)[-1] for p in one["paths"]] == [
        p.split("/", 1)[-1] for p in many["paths"]
    ]
    print(
        json.dumps(
            {
                "variables": len(one["weights"]),
                "trainable": [one["trainable"], many["trainable"]],
                "loss": [one["loss"], many["loss"]],
                "devices": many["devices"],
                "max_abs_diff": max(
                    float(np.abs(a - b).max())
                    for a, b in zip(one["weights"], many["weights"])
                ),
                "max_abs_value": max(
                    float(np.abs(a).max()) for a in one["weights"]
                ),
            }
        )
    )


def _steps_per_execution(strategy):
    """Two steps per compiled call (as TPUs run several) on JAX. With
    Keras 3.15 and TensorFlow 2.21, more than one under a MirroredStrategy
    of several devices fails for any model, a single Dense layer too
    ("You must feed a value for placeholder tensor": keras-team/keras#19246,
    open)."""
    return 2 if strategy == "data_parallel" else 1


def _devices(model):
    """The fewest devices any trainable variable has a copy on."""
    counts = []
    for variable in model.trainable_weights:
        if keras.backend.backend() == "jax":
            counts.append(len(variable.value.sharding.device_set))
        else:
            values = getattr(variable.value, "values", None)
            counts.append(len(values) if values is not None else 1)
    return min(counts)


if __name__ == "__main__":
    main(*sys.argv[1:])
