"""The T5 table-to-text examples run offline in their `--tiny` mode, learn,
and reload (and, for LoRA, merge) to the same outputs."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The examples' own dependencies (`pip install -e ".[examples]"`).
pytest.importorskip("sentencepiece")
pytest.importorskip("rouge_score")


def run_example(script, tmp_path, *flags):
    adapter = os.path.join(tmp_path, "adapter")
    result = subprocess.run(
        [
            sys.executable,
            f"examples/{script}",
            "--tiny",
            "--output",
            adapter,
            *flags,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, adapter


def scores(stdout, label):
    """BLEU and ROUGE-L of the line that starts with `label`."""
    match = re.search(rf"{label}: BLEU ([\d.]+), ROUGE-L ([\d.]+)", stdout)
    assert match, f"no {label!r} scores in:\n{stdout[-3000:]}"
    return float(match[1]), float(match[2])


def assert_trained_and_reloaded(stdout, adapter, method):
    assert "Trainable parameters of T5Seq2SeqLM" in stdout
    assert re.search(rf"^\s+{method}\s+[\d,]+$", stdout, re.MULTILINE)
    assert f"Variable groups that train: {method}\n" in stdout
    assert "OK: reloaded model reproduces the trained model's outputs." in (
        stdout
    )
    assert sorted(os.listdir(adapter)) == [
        "adapter_config.json",
        "adapter_weights.safetensors",
    ]
    # Three MRs are shown with their sentences, before and after training.
    assert stdout.count("  generated: ") == 6
    # Tiny runs start from a random T5 (no pretraining). Measured on seeds
    # 0-2: the loss falls by 20-25% and ROUGE-L goes from 0-0.7 to 4-25
    # (BLEU to 0-6: too few 4-grams to compare); the bounds leave room for
    # another CPU's rounding, which changes the trajectory.
    losses = re.search(r"Training loss ([\d.]+) .* -> ([\d.]+) ", stdout)
    first, last = float(losses[1]), float(losses[2])
    assert last < 0.9 * first, stdout[-3000:]
    _, rouge_before = scores(stdout, "Before training")
    _, rouge_after = scores(stdout, "After training")
    assert rouge_after > rouge_before, stdout[-3000:]


def test_prefix_tuning_example(tmp_path):
    stdout, adapter = run_example("prefix_tuning.py", tmp_path)
    assert_trained_and_reloaded(stdout, adapter, "prefix_tuning")


def test_lora_t5_example(tmp_path):
    # With the offline default's pretraining of the base (one epoch): the
    # base saved after it is what the reload check rebuilds.
    stdout, adapter = run_example(
        "lora_t5.py", tmp_path, "--pretrain-epochs", "1"
    )
    assert "Pretrained the base model as a denoising autoencoder" in stdout
    assert_trained_and_reloaded(stdout, adapter, "lora")
    assert "OK: merged model reproduces the trained model's outputs." in (
        stdout
    )
