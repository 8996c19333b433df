"""Training over several devices, or several worker processes, equals
training on one device (`examples/train_distributed.py`, in subprocesses:
devices and clusters are fixed when a backend starts)."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

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
    # TensorFlow's default thread pools, as a user's run has them: the
    # suite's one-thread setting (tests/conftest.py) is for its own
    # processes, which share the cores.
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
    # values reach about 4 in magnitude; measured differences: 4.7e-7
    # (MirroredStrategy), 2.7e-7 (JAX).
    assert report["max_abs_diff"] <= 1e-5, report
    np.testing.assert_allclose(*report["loss"], rtol=1e-5)
    assert report["loss"][0][-1] < report["loss"][0][0]  # it trained


@TENSORFLOW_ONLY
def test_mirrored_over_two_cpu_devices_equals_one_device():
    """LoRA with `GroupedOptimizer` (the head at its own rate), built,
    applied, compiled and fitted inside `MirroredStrategy.scope()` over two
    logical CPU devices, against the default strategy, same global batch
    and seed. Every method at once runs the same check over JAX's devices
    (below); here one method keeps the TensorFlow suite's time down."""
    _assert_matches_one_device(_compare("mirrored", "lora"))


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


def _worker_command(method, tmp_path, index):
    return [
        sys.executable,
        EXAMPLE,
        "--strategy=multiworker",
        f"--method={method}",
        *_TRAINING_FLAGS,
        f"--output={tmp_path / 'adapter'}",
        f"--weights-out={tmp_path / f'worker{index}.npz'}",
    ]


_TRAINING_FLAGS = (
    "--train=64",
    "--batch=16",
    "--epochs=2",
    "--dropout=0",
    "--verbose=0",
)


def _run_workers(method, tmp_path):
    """Runs two worker processes on ports of localhost; returns each one's
    return code (or "timeout") and output. Both are killed as soon as
    either fails, or when `TIMEOUT` has passed."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    with contextlib.ExitStack() as stack:
        processes, logs = [], []
        for index in range(2):
            log = stack.enter_context(
                open(tmp_path / f"worker{index}.log", "w+")
            )
            logs.append(log)
            tf_config = {
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": index},
            }
            process = subprocess.Popen(
                _worker_command(method, tmp_path, index),
                cwd=ROOT,
                env=_environment(TF_CONFIG=json.dumps(tf_config)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(_kill, process)
            processes.append(process)
        codes = _wait_all(processes)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
    return codes, outputs


def _wait_all(processes):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        codes = [p.poll() for p in processes]
        if all(code == 0 for code in codes) or any(codes):
            break  # all done, or one failed: its peer would wait forever
        time.sleep(0.2)
    return ["timeout" if p.poll() is None else p.returncode for p in processes]


def _kill(process):
    if process.poll() is None:
        process.kill()
        process.wait()


def _report(output):
    """The JSON line the example prints last."""
    return json.loads(output.strip().splitlines()[-1])


@TENSORFLOW_ONLY
@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_multi_worker_mirrored_two_processes(method, tmp_path):
    codes, outputs = _run_workers(method, tmp_path)
    if codes != [0, 0] and any("Address already in use" in o for o in outputs):
        # Another process took a port between `_free_ports` and the
        # workers' servers: once more, with other ports.
        shutil.rmtree(tmp_path / "adapter", ignore_errors=True)
        codes, outputs = _run_workers(method, tmp_path)
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    reports = [_report(output) for output in outputs]
    assert [r["chief"] for r in reports] == [True, False]
    losses = reports[0]["losses"]
    assert losses[-1] < losses[0]  # it trained
    assert reports[1]["losses"] == losses  # the same all-reduced loss
    with np.load(tmp_path / "worker0.npz") as f:
        chief = dict(f)
    with np.load(tmp_path / "worker1.npz") as f:
        worker = dict(f)
    assert sorted(chief) == sorted(worker)
    for name in chief:
        # Exact: both workers apply the same all-reduced gradients to the
        # same values with the same ops.
        np.testing.assert_array_equal(chief[name], worker[name], name)
    if method == "lora":
        # Both workers start alike whether or not they train (the strategy
        # copies worker 0's initial values): LoRA's B, which starts at 0,
        # shows the steps were applied.
        assert any(
            np.abs(v).max() > 0 for k, v in chief.items() if "lora_b" in k
        )
    # The chief alone wrote the adapter; the other worker wrote nothing.
    assert sorted(os.listdir(tmp_path / "adapter")) == [
        "adapter_config.json",
        "adapter_weights.safetensors",
    ]
    # The chief reloaded its bundle into a fresh model: same logits.
    assert "OK: the reloaded adapter reproduces" in outputs[0]
