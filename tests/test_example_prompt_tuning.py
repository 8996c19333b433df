"""examples/prompt_tuning.py runs offline, learns, and reloads its adapter."""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prompt_tuning_example_runs_offline_and_reloads(tmp_path):
    adapter = os.path.join(tmp_path, "adapter")
    result = subprocess.run(
        [
            sys.executable,
            "examples/prompt_tuning.py",
            "--tiny",
            "--output",
            adapter,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Trainable parameters of BertTextClassifier" in out
    # Only the prompt (8 vectors of width 64) and the head (64 x 2 + 2).
    assert re.search(r"prompt_tuning\s+512\n", out), out[:2000]
    assert re.search(r"head\s+130\n", out), out[:2000]
    assert "OK: reloaded adapter reproduces" in out
    assert sorted(os.listdir(adapter)) == [
        "adapter_config.json",
        "adapter_weights.safetensors",
    ]
    match = re.search(
        r"validation accuracy ([\d.]+) \(before training ([\d.]+), "
        r"majority class ([\d.]+)\), validation loss ([\d.]+) \(before "
        r"training ([\d.]+)\)",
        out,
    )
    assert match, out[-3000:]
    accuracy, _, majority, loss, loss_before = map(float, match.groups())
    # One epoch of 96 steps, 128 validation sentences. Measured: 0.922 with
    # this run's seed (0), 0.805 to 0.945 with seeds 1 to 5 (which change
    # the random base model, the data and its order, as another CPU's
    # rounding changes the training path); the head alone, the prompt
    # frozen, 0.695 and 0.664 (seeds 0, 1). So this fails when the prompt
    # does not learn.
    assert accuracy >= 0.75 and accuracy > majority + 0.1, out[-3000:]
    assert loss < loss_before, out[-3000:]
    assert re.search(r"Words nearest the learned prompt vectors:\n  0: ", out)


def _sentiment_task():
    path = os.path.join(ROOT, "examples", "sentiment_task.py")
    spec = importlib.util.spec_from_file_location("sentiment_task", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("header", [True, False])
def test_load_tsv_with_or_without_header(tmp_path, header):
    path = os.path.join(tmp_path, "train.tsv")
    rows = ["a gripping film \t1", "dull\t0", "dull\t0", "moving\t1", "flat\t0"]
    with open(path, "w") as f:
        f.write("sentence\tlabel\n" * header + "\n".join(rows) + "\n")
    load_tsv = _sentiment_task().load_tsv
    (x_train, y_train), (x_val, y_val) = load_tsv(path, 3, 1, seed=0)
    # The duplicate is dropped: four distinct sentences, none in both sets.
    pairs = dict(zip([*x_train, *x_val], [*y_train, *y_val]))
    assert len(pairs) == len(x_train) + len(x_val) == 4
    assert pairs == {"a gripping film": 1, "dull": 0, "moving": 1, "flat": 0}
    with pytest.raises(SystemExit, match="exceed the 4 distinct"):
        load_tsv(path, 4, 1, seed=0)


def test_preset_classifier_loads_a_keras_hub_preset_directory(tmp_path):
    """A directory `save_to_preset` wrote (keras-hub's format, with a
    config.json of its own) is not taken for a Hugging Face one."""
    task = _sentiment_task()
    model = task.small_classifier()
    model.save_to_preset(str(tmp_path))
    assert task.hugging_face_fixes(str(tmp_path)) is None
    loaded = task.preset_classifier(str(tmp_path))
    # The backbone's weights and the vocabulary came back (the head is
    # new: `preset_classifier` asks for a fresh one).
    np.testing.assert_array_equal(
        loaded.backbone.get_layer("token_embedding").get_weights()[0],
        model.backbone.get_layer("token_embedding").get_weights()[0],
    )
    tokenizers = [m.preprocessor.tokenizer for m in (loaded, model)]
    assert tokenizers[0].get_vocabulary() == tokenizers[1].get_vocabulary()
