"""Training over several devices, or several worker processes, equals
training on one device (`examples/train_distributed.py`, in subprocesses:
devices and clusters are fixed when a backend starts)."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_peft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "train_distributed.py")
COMPARE = os.path.join(ROOT, "tests", "distribute", "compare_to_one_device.py")
TENSORFLOW_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute needs TensorFlow",
)
# Every process is bounded: a worker waiting for a peer that died would
# otherwise wait forever.
TIMEOUT = 300


def _environment(**extra):
    env = dict(os.environ)
    # One thread pool per process: the test's processes share the cores.
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(name, None)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _compare(strategy, method, **env):
    result = subprocess.run(
        [sys.executable, COMPARE, strategy, method],
        cwd=ROOT,
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_matches_one_device(report):
    assert report["devices"] == 2  # every variable has a replica on each
    assert report["trainable"][0] == report["trainable"][1]
    # Close, not exact: two replicas each sum half the batch's gradients,
    # then add the halves; one device sums the batch in one order. Trained
    # values reach about 4 in magnitude; measured differences are below
    # 5e-7.
    assert report["max_abs_diff"] <= 1e-5, report
    np.testing.assert_allclose(*report["loss"], rtol=1e-5)
    assert report["loss"][0][-1] < report["loss"][0][0]  # it trained


@TENSORFLOW_ONLY
def test_mirrored_over_two_cpu_devices_equals_one_device():
    """Every method at once, with `GroupedOptimizer`, built, applied,
    compiled and fitted inside `MirroredStrategy.scope()` over two logical
    CPU devices, against the default strategy, same global batch and
    seed."""
    _assert_matches_one_device(_compare("mirrored", "all"))


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution on JAX: checked in the JAX run",
)
def test_jax_data_parallel_over_two_devices_equals_one_device():
    _assert_matches_one_device(
        _compare(
            "data_parallel",
            "all",
            KERAS_BACKEND="jax",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
        )
    )


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(method, tmp_path):
    """Runs two worker processes on loopback ports; returns each one's
    `(return code, output)`. Both are killed if either fails or runs past
    `TIMEOUT`."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes, logs = [], []
    try:
        for index in range(2):
            log = open(os.path.join(tmp_path, f"worker{index}.log"), "w+")
            logs.append(log)
            tf_config = {
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": index},
            }
            command = [
                sys.executable,
                EXAMPLE,
                "--strategy=multiworker",
                f"--method={method}",
                "--train=64",
                "--batch=16",
                "--epochs=2",
                "--dropout=0",
                "--verbose=0",
                f"--output={tmp_path / 'adapter'}",
                f"--weights-out={tmp_path / f'worker{index}.npz'}",
            ]
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=_environment(TF_CONFIG=json.dumps(tf_config)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=TIMEOUT))
            except subprocess.TimeoutExpired:
                codes.append("timeout")
            if codes[-1] != 0:
                break
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return codes, outputs


@TENSORFLOW_ONLY
@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_multi_worker_mirrored_two_processes(method, tmp_path):
    codes, outputs = _run_workers(method, tmp_path)
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    chief = np.load(tmp_path / "worker0.npz")
    worker = np.load(tmp_path / "worker1.npz")
    assert sorted(chief) == sorted(worker)
    for name in chief:
        # Exact: both workers apply the same all-reduced gradients to the
        # same values with the same ops.
        np.testing.assert_array_equal(chief[name], worker[name], name)
    # The chief alone wrote the adapter; the other worker wrote nothing.
    assert "saved" in outputs[0] and "saved" not in outputs[1]
    assert sorted(os.listdir(tmp_path / "adapter")) == [
        "adapter_config.json",
        "adapter_weights.safetensors",
    ]
    _assert_bundle_holds(tmp_path / "adapter", chief, method)


def _assert_bundle_holds(path, chief, method):
    """The chief's bundle loads into a fresh model with the chief's values
    (LoRA; a prefix bundle holds the prefix the MLP computed, so there the
    config is checked)."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import sentiment_task
    finally:
        sys.path.pop(0)
    model = sentiment_task.small_classifier(sequence_length=12, dropout=0)
    keras_peft.load_adapter(model, str(path))
    (config,) = keras_peft.applied_configs(model)
    assert config.method == ("lora" if method == "lora" else "prefix_tuning")
    if method == "lora":
        loaded = {
            v.path.split("/", 1)[-1]: keras.ops.convert_to_numpy(v)
            for v in model.trainable_weights
            if "lora" in v.path
        }
        trained = {
            name.split("/", 1)[-1]: value
            for name, value in chief.items()
            if "lora" in name
        }
        assert loaded and sorted(loaded) == sorted(trained)
        for name, value in loaded.items():
            # Exact: the values travel through the file unchanged.
            np.testing.assert_array_equal(value, trained[name], name)
