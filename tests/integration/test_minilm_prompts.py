"""Prompt and prefix tuning on a real pretrained BERT (MiniLM) and SST-2.

Skips when ../shared (the checkpoint and data) is absent.
"""

import os

import numpy as np
import pytest

import keras_peft
from tests.integration import minilm_sst2 as data

pytestmark = pytest.mark.large

LAYERS, WIDTH = 6, 384


@pytest.fixture(scope="module")
def minilm():
    return data.checkpoint()


def _learn(model, epochs, learning_rate, head_learning_rate):
    """Trains on 640 sentences; returns validation metrics before, after."""
    x_train, y_train = data.sst2(640, offset=0)
    x_val, y_val = data.sst2(256, offset=60000)
    frozen = data.frozen_values(model)
    data.compile_classifier(model, learning_rate, head_learning_rate)
    before = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    after = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    data.assert_unchanged(frozen)
    return before, after, x_val[:32]


def test_prefix_learns_sst2_ejects_and_round_trips(minilm, tmp_path):
    model = data.classifier(minilm)
    keras_peft.apply(model, keras_peft.PrefixTuningConfig(length=10))
    summary = keras_peft.trainable_summary(model)
    # P' (10 x 512), a 512-512 tanh layer, an output layer to every layer's
    # 10 keys and values of width 384.
    mlp = 10 * 512 + 512 * 512 + 512 + (512 + 1) * LAYERS * 2 * WIDTH
    assert dict(summary.groups)["prefix_tuning"] == mlp

    before, after, x = _learn(model, 3, 5e-4, 1e-2)
    print("SST-2 validation before/after prefix tuning:", before, after)
    assert after["accuracy"] >= 0.72, (before, after)
    assert after["loss"] < before["loss"]

    expected = model.predict(x, verbose=0)
    keras_peft.eject_prefix(model)
    # Close: predict's graph ran the MLP; eject() reran it eagerly.
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    ejected = keras_peft.trainable_summary(model)
    assert dict(ejected.groups)["prefix_tuning"] == LAYERS * 2 * 10 * WIDTH

    path = os.path.join(tmp_path, "sst2-prefix")
    keras_peft.save_adapter(model, path)
    # The prefix (46,080 values) and the head, in float32, plus metadata.
    assert data.adapter_size(path) < 4 * ejected.trainable + 20_000
    fresh = data.classifier(minilm)
    keras_peft.load_adapter(fresh, path)
    # Close: expected came from the MLP in predict's graph (see above).
    np.testing.assert_allclose(fresh.predict(x, verbose=0), expected, atol=1e-5)


def test_prompt_learns_sst2_and_round_trips(minilm, tmp_path):
    model = data.classifier(minilm)
    config = keras_peft.PromptTuningConfig(
        length=20, init="labels", class_labels=["negative", "positive"]
    )
    keras_peft.apply(model, config)
    summary = keras_peft.trainable_summary(model)
    assert dict(summary.groups)["prompt_tuning"] == 20 * WIDTH

    # Prompt tuning is slow at this scale (Lester et al.: it catches up
    # with full fine-tuning only at billions of parameters).
    before, after, x = _learn(model, 6, 3e-3, 1e-2)
    print("SST-2 validation before/after prompt tuning:", before, after)
    assert after["accuracy"] >= 0.68, (before, after)
    assert after["loss"] < before["loss"]

    path = os.path.join(tmp_path, "sst2-prompt")
    keras_peft.save_adapter(model, path)
    assert data.adapter_size(path) < 4 * summary.trainable + 20_000
    expected = model.predict(x, verbose=0)
    fresh = data.classifier(minilm)
    keras_peft.load_adapter(fresh, path)
    # Exact: a save/load round trip runs the same ops on the same values.
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), expected)
