"""LoRA on a real pretrained BERT (MiniLM) and real SST-2 sentences.

Skips when ../shared (the checkpoint and data) is absent.
"""

import os

import numpy as np
import pytest

import keras_peft
from tests.integration import minilm_sst2 as data

pytestmark = pytest.mark.large


def test_lora_learns_sst2_and_round_trips(minilm, sst2, tmp_path):
    model = data.classifier(minilm)
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=8, alpha=16))
    summary = keras_peft.trainable_summary(model)
    # 6 layers, width 384, rank 8: 2 * 6 * 2 * 384 * 8, plus the 2-way head.
    assert dict(summary.groups)["lora"] == 2 * 6 * 2 * 384 * 8
    assert summary.fraction < 0.01

    # One epoch of 40 steps. Measured on this split (seeds 0 and 1 for the
    # initial weights): 0.775 and 0.783; the head alone (LoRA frozen), with
    # the same steps and rate, 0.607, and the untrained model 0.51-0.54.
    before, after = data.learn(model, sst2, 1, 5e-3, batch_size=16)
    print("SST-2 validation before/after LoRA:", before, after)
    assert after["accuracy"] >= 0.72, (before, after)
    assert after["loss"] < before["loss"]

    path = os.path.join(tmp_path, "sst2")
    keras_peft.save_adapter(model, path)
    assert data.adapter_size(path) < 0.02 * 4 * summary.total
    x = sst2.sample()
    expected = data.logits(model, x)
    fresh = data.classifier(minilm)
    keras_peft.load_adapter(fresh, path)
    # Exact: a save/load round trip runs the same ops on the same values.
    np.testing.assert_array_equal(data.logits(fresh, x), expected)
    keras_peft.merge_lora(fresh)
    # Close: merged kernels, against the unmerged pass that made expected.
    np.testing.assert_allclose(data.logits(fresh, x), expected, atol=1e-4)
