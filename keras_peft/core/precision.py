"""Compute dtypes a backbone family cannot run in, found by trying."""

import functools
import threading

import keras
import numpy as np
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention


@functools.cache
def _t5_attention_is_finite(compute_dtype):
    """Whether keras-hub's T5 attention, with a mask, outputs finite values
    when it computes in `compute_dtype` (cached: a tiny eager call).

    keras-hub 0.32 folds the mask into the position bias as
    `(1 - mask) * -1e9`; in float16, -1e9 is -inf and a kept position gets
    `0 * -inf`, NaN (on TensorFlow and JAX; torch computes that product in
    float32). Tried, rather than assumed from a version, so that a keras-hub
    that fixes it is allowed at once.

    The probe runs in a thread of its own: there no `tf.distribute` scope
    (thread-local) makes its variables distributed, which under a
    multi-worker strategy would need every worker to probe in step.
    """
    result = []

    def probe():
        layer = T5MultiHeadAttention(
            is_decoder=False,
            hidden_dim=2,
            key_value_dim=2,
            num_heads=1,
            dropout=0.0,
            use_relative_attention_bias=True,
            dtype=compute_dtype,
            # Named, so that Keras' counters of automatic names stay as
            # they were.
            name="keras_peft_precision_probe",
        )
        outputs, _, _ = layer(
            np.ones((1, 2, 2), "float32"), mask=np.array([[[1, 0], [1, 0]]])
        )
        outputs = keras.ops.convert_to_numpy(outputs)
        result.append(bool(np.isfinite(outputs).all()))

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError(
            "keras-peft could not try keras-hub's T5 attention in "
            f"{compute_dtype} (the error is printed above)."
        )
    return result[0]


def check_compute_dtype(context):
    """Raises if the model's backbone cannot compute in its dtype policy.

    A keras-hub T5 under `mixed_float16` (or `float16`) outputs NaN before
    any method is applied; training it would only turn every weight NaN.
    Called by `apply`, and so by `load_adapter` and by loading a `.keras`
    file of an applied model.

    Args:
        context: the `ModelContext` of the model.

    Raises:
        ValueError: the backbone computes NaN in its compute dtype.
    """
    if context.architecture.name != "t5":
        return
    policy = context.backbone.dtype_policy
    compute_dtype = keras.backend.standardize_dtype(policy.compute_dtype)
    if compute_dtype != "float16" or _t5_attention_is_finite(compute_dtype):
        return
    raise ValueError(
        f"This T5Backbone computes in float16 (dtype policy "
        f"'{policy.name}'), where keras-hub's T5 attention outputs NaN "
        "before any method is applied: it masks with a bias of -1e9, which "
        "float16 cannot hold. Use 'mixed_bfloat16' (T5 was pretrained in "
        "bfloat16) or 'float32'."
    )
