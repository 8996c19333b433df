"""LoRA on a real pretrained BERT (MiniLM) and real SST-2 sentences.

Skips when ../shared (the checkpoint and data) is absent.
"""

import os

import numpy as np
import pytest

import keras_peft
from tests.integration import minilm_sst2 as data

pytestmark = pytest.mark.large


@pytest.fixture(scope="module")
def minilm():
    return data.checkpoint()


def test_lora_learns_sst2_and_round_trips(minilm, tmp_path):
    x_train, y_train = data.sst2(640, offset=0)
    x_val, y_val = data.sst2(256, offset=60000)
    model = data.classifier(minilm)
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=8, alpha=16))
    summary = keras_peft.trainable_summary(model)
    # 6 layers, width 384, rank 8: 2 * 6 * 2 * 384 * 8, plus the 2-way head.
    assert dict(summary.groups)["lora"] == 2 * 6 * 2 * 384 * 8
    assert summary.fraction < 0.01

    frozen = data.frozen_values(model)
    data.compile_classifier(model, 2e-3)
    before = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    after = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    print("SST-2 validation before/after LoRA:", before, after)
    assert after["accuracy"] >= 0.75, (before, after)
    assert after["loss"] < before["loss"]
    data.assert_unchanged(frozen)

    path = os.path.join(tmp_path, "sst2")
    keras_peft.save_adapter(model, path)
    assert data.adapter_size(path) < 0.02 * 4 * summary.total
    expected = model.predict(x_val[:32], verbose=0)
    fresh = data.classifier(minilm)
    keras_peft.load_adapter(fresh, path)
    # Exact: a save/load round trip runs the same ops on the same values.
    np.testing.assert_array_equal(
        fresh.predict(x_val[:32], verbose=0), expected
    )
    keras_peft.merge_lora(fresh)
    # Close: merged kernels, against the unmerged pass that made expected.
    np.testing.assert_allclose(
        fresh.predict(x_val[:32], verbose=0), expected, atol=1e-4
    )
