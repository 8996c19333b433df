"""LoRA on a real pretrained BERT (MiniLM) and real SST-2 sentences.

Skips when ../shared (the checkpoint and data) is absent.
"""

import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from tests import helpers

pytestmark = pytest.mark.large

SST2 = os.path.join(helpers.SHARED, "data", "sst2", "train.tsv")


@pytest.fixture(scope="module")
def minilm():
    path = helpers.minilm_path()
    if path is None or not os.path.exists(SST2):
        pytest.skip("../shared (MiniLM checkpoint, SST-2) is not available")
    return path


def _sst2(count, offset):
    with open(SST2) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    rows = [r for r in rows[1:] if len(r) == 2 and r[1] in ("0", "1")]
    rows = rows[offset : offset + count]
    return np.array([r[0] for r in rows]), np.array([int(r[1]) for r in rows])


def _classifier(path):
    keras.utils.set_random_seed(0)
    model = keras_hub.models.BertTextClassifier.from_preset(path, num_classes=2)
    model.preprocessor.sequence_length = 32
    return model


def test_lora_learns_sst2_and_round_trips(minilm, tmp_path):
    x_train, y_train = _sst2(640, offset=0)
    x_val, y_val = _sst2(256, offset=60000)
    model = _classifier(minilm)
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=8, alpha=16))
    summary = keras_peft.trainable_summary(model)
    # 6 layers, width 384, rank 8: 2 * 6 * 2 * 384 * 8, plus the 2-way head.
    assert dict(summary.groups)["lora"] == 2 * 6 * 2 * 384 * 8
    assert summary.fraction < 0.01

    frozen = [
        (v, np.array(v.numpy())) for v in model.weights if not v.trainable
    ]
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    after = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    print("SST-2 validation before/after LoRA:", before, after)
    assert after["accuracy"] >= 0.75, (before, after)
    assert after["loss"] < before["loss"]
    for variable, value in frozen:
        np.testing.assert_array_equal(variable.numpy(), value, variable.path)

    path = os.path.join(tmp_path, "sst2")
    keras_peft.save_adapter(model, path)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    assert size < 0.02 * 4 * summary.total
    expected = model.predict(x_val[:32], verbose=0)
    fresh = _classifier(minilm)
    keras_peft.load_adapter(fresh, path)
    np.testing.assert_allclose(
        fresh.predict(x_val[:32], verbose=0), expected, atol=1e-5
    )
    keras_peft.merge_lora(fresh)
    np.testing.assert_allclose(
        fresh.predict(x_val[:32], verbose=0), expected, atol=1e-4
    )
