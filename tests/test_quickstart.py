"""The README's quickstart runs as written, offline."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs_offline_and_reloads(tmp_path):
    adapter = os.path.join(tmp_path, "adapter")
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py", "--output", adapter],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Trainable parameters of BertTextClassifier" in result.stdout
    assert "OK: reloaded adapter reproduces" in result.stdout
    # LoRA alone (frozen random backbone) learns the task.
    accuracy = float(
        re.search(r"validation accuracy ([\d.]+)", result.stdout)[1]
    )
    assert accuracy >= 0.8, result.stdout[-3000:]
    assert sorted(os.listdir(adapter)) == [
        "adapter_config.json",
        "adapter_weights.safetensors",
    ]
