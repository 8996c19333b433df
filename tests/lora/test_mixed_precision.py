import keras
import numpy as np

import keras_peft
from tests import helpers


def test_fit_under_mixed_bfloat16_policy():
    case = helpers.MODEL_CASES["bert_classifier"]
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = case.make()
        keras_peft.apply(model, keras_peft.LoRAConfig(rank=4, alpha=8))
        helpers.compile(
            model, optimizer=keras.optimizers.Adam(0.02), loss=case.loss
        )
        frozen = [
            (v, np.array(v.numpy())) for v in model.weights if not v.trainable
        ]
        lora = [v for v in model.trainable_weights if "lora" in v.name]
        history = model.fit(case.inputs(), case.labels(), epochs=15, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert {str(v.dtype) for v in lora} == {"float32"}
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]
    for variable, value in frozen:  # exact: frozen weights are never written
        np.testing.assert_array_equal(variable.numpy(), value)
