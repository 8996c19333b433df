"""examples/compare_methods.py runs offline and writes its table and plot."""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_methods_offline(tmp_path):
    out = os.path.join(tmp_path, "table.md")
    plot = os.path.join(tmp_path, "plot.png")
    # A process of its own: the script seeds TensorFlow's global generator
    # (`keras.utils.set_random_seed`), which would drop the resources of
    # other tests' module-scoped fixtures in this process.
    result = subprocess.run(
        [
            sys.executable,
            "examples/compare_methods.py",
            "--methods=lora_attn,bitfit",
            "--train=32",
            "--val=16",
            "--batch=16",
            "--epochs=1",
            "--verbose=0",
            f"--out={out}",
            f"--plot={plot}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out) as f:
        table = f.read()
    assert table in result.stdout
    rows = {}
    for line in table.splitlines():
        match = re.match(
            r"\| (.+?) \| [^|]+ \| ([\d,]+) \(([\d.]+)%\) \| ([\d.]+) \| "
            r"[\d. /]+ \| (\d+) \|$",
            line,
        )
        if match:
            label, params, share, accuracy, step = match.groups()
            rows[label] = (int(params.replace(",", "")), float(share))
            assert 0 <= float(accuracy) <= 1, line
            assert int(step) > 0, line
    # The quickstart's BERT (2 layers, width 64, FFN 128) and its head
    # (64 x 2 + 2): LoRA r=8 on query and value, 2 * 2 * (64 * 8 * 2); the
    # backbone's biases, 2 * (7 * 64 + 128) and 2 * 64 (embedding layer
    # norm, pooler).
    head = 64 * 2 + 2
    assert list(rows) == ["LoRA r=8 (attn)", "BitFit"], table
    assert rows["LoRA r=8 (attn)"][0] == 2 * 2 * 64 * 8 * 2 + head
    assert rows["BitFit"][0] == 2 * (7 * 64 + 128) + 2 * 64 + head
    assert all(0 < share < 100 for _, share in rows.values()), table
    if importlib.util.find_spec("matplotlib") is not None:
        with open(plot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in result.stdout


def test_linear_schedule_warms_up_then_decays_to_zero():
    """`--schedule linear`: up to the peak over the warmup steps, then down,
    reaching 0 one step past the last."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import compare_methods
    finally:
        sys.path.pop(0)
    args = compare_methods.parse_args(
        ["--train=100", "--batch=10", "--epochs=2", "--schedule=linear"]
    )
    schedule = compare_methods.rate(0.5, args)  # 20 steps, 2 of warmup
    rates = [float(schedule(step)) for step in range(21)]
    expected = [0.25, 0.5] + [0.5 * (20 - s) / 18 for s in range(2, 21)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    constant = compare_methods.parse_args(["--train=100"])
    assert compare_methods.rate(0.5, constant) == 0.5
