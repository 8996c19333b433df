"""Every method trains compiled with XLA under mixed_bfloat16 and
mixed_float16 (with loss scaling): the path a TPU or GPU run takes."""

import keras
import numpy as np
import pytest

import keras_peft
from keras_peft.core import precision
from tests import helpers

# Two unions run every method's code: the first is the matrix's union of
# all (prompt, prefix through its MLP, LoRA, sequential, learned-scale
# parallel and multi-head adapters, and BitFit on BERT); the second is MAM
# with a directly trained prefix and a fixed scale, with LoRA inside the
# FFN its parallel adapter wraps. Each case compiles a train step, seconds
# each, so unions rather than one case per method.
_MAM_AND_LORA = [
    keras_peft.MAMConfig(
        prefix_length=helpers.PREFIX_LENGTH,
        bottleneck=helpers.ADAPTER_BOTTLENECK,
        reparam=False,
        activation="gelu",
    ),
    keras_peft.LoRAConfig(rank=2, targets="ffn"),
]
_UNIONS = {
    "bert_classifier": {
        "all_methods_and_bitfit": lambda: helpers.METHOD_CASES[
            "all_methods_and_bitfit"
        ].config(None),
        "mam_direct_and_lora_ffn": lambda: _MAM_AND_LORA,
    },
    "t5_seq2seq": {
        "all_methods": lambda: helpers.METHOD_CASES["all_methods"].config(None),
        "mam_direct_and_lora_ffn": lambda: _MAM_AND_LORA,
    },
}


def _cases():
    # float32 under XLA fits in `test_method_matrix`; the 16-bit policies
    # compile the same steps with casts added.
    cases = []
    for policy in ("mixed_bfloat16", "mixed_float16"):
        for model, unions in _UNIONS.items():
            cases.extend((policy, model, union) for union in unions)
    return cases


def _jax_on_cpu():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


@pytest.fixture
def global_policy():
    """Sets the global dtype policy for one test, then restores it."""
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("policy,model_name,union", _cases())
def test_fit_compiled_in_each_precision(
    policy, model_name, union, global_policy
):
    if policy == "mixed_float16" and _jax_on_cpu():
        pytest.skip(
            "JAX has no float16 matmul on CPU (dot_general 'F16_F16_F32'), "
            "for keras-hub's BERT alone too; it has on GPU"
        )
    global_policy(policy)
    model_case = helpers.MODEL_CASES[model_name]
    model = model_case.make()
    if model_name == "t5_seq2seq" and not _t5_computes(policy):
        _assert_refused(model_case, model, _UNIONS[model_name][union]())
        return
    base = {id(v) for v in model.weights}
    keras_peft.apply(model, _UNIONS[model_name][union]())
    helpers.compile(
        model,
        # Grouped, so that float16 checks Keras' loss scaling around it.
        optimizer=keras_peft.GroupedOptimizer(
            keras.optimizers.Adam(0.05),
            learning_rates={"lora": 0.02},
            model=model,
        ),
        loss=model_case.loss,
        # XLA on TensorFlow and JAX; torch would compile with
        # `torch.compile`, which is not what this checks.
        jit_compile=keras.backend.backend() != "torch",
    )
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # Keras wraps the optimizer for float16 only: bfloat16 has float32's
    # exponent range, so its gradients do not underflow.
    assert scaled == (policy == "mixed_float16")
    assert any(id(v) not in base for v in model.trainable_weights)
    assert model_case.backbone(model).dtype_policy.name == policy
    # New weights stay float32 whatever the policy computes in: the
    # optimizer's small updates would round away in 16 bits.
    assert {str(v.dtype) for v in model.trainable_weights} == {"float32"}
    trainable_before = [np.array(v.numpy()) for v in model.trainable_weights]
    frozen = [
        (v, np.array(v.numpy())) for v in model.weights if not v.trainable
    ]
    history = model.fit(
        model_case.inputs(),
        model_case.labels(),
        epochs=3,
        batch_size=4,
        verbose=0,
    )
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    if scaled:
        # The scaled gradients were unscaled and applied: the wrapped
        # optimizer stepped, with a finite scale.
        inner = model.optimizer.inner_optimizer
        assert isinstance(inner, keras_peft.GroupedOptimizer)
        assert int(keras.ops.convert_to_numpy(inner.iterations)) >= 1
        scale = float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
        assert np.isfinite(scale) and scale > 0
    for variable, start in zip(model.trainable_weights, trainable_before):
        assert not np.array_equal(variable.numpy(), start), variable.path
    for variable, start in frozen:
        # Exact: a frozen weight is never written.
        np.testing.assert_array_equal(variable.numpy(), start, variable.path)
    outputs = model_case.outputs(model)
    assert all(np.isfinite(x).all() for x in keras.tree.flatten(outputs))


def _t5_computes(policy):
    return precision._t5_attention_is_finite(policy)


def _assert_refused(model_case, model, configs):
    """Where keras-hub's T5 computes NaN in float16 (TensorFlow and JAX,
    whose float16 -1e9 in its mask bias is -inf; torch computes that scalar
    product in float32), `apply` refuses the model and leaves it as it was."""
    outputs = keras.ops.convert_to_numpy(model(model_case.inputs()))
    assert np.isnan(outputs).all()  # the reason, in keras-hub alone
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="'mixed_float16'.*mixed_bfloat16"):
        keras_peft.apply(model, configs)
    # Exact: the refused call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
