"""Trainable parameter counts equal He et al.'s (2022) formula table, on a
12-layer T5 of width d with a non-gated FFN of width 4d."""

import keras_hub

import keras_peft
from keras_peft.core import injection

D, L_PREFIX, L_PROMPT, R, HEADS = 8, 3, 5, 2, 2
LAYERS = 12


def _t5():
    return keras_hub.models.T5Backbone(
        vocabulary_size=10,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=D,
        intermediate_dim=4 * D,
        key_value_dim=D // HEADS,  # heads x key_value_dim = d, as in T5
        use_gated_activation=False,
        dropout=0.0,
    )


def _planned_count(model, configs):
    """Parameters that would train, from a plan that is then dropped."""
    plan = injection.plan(model, configs)
    try:
        return sum(
            int(v.numpy().size) for v in plan.trainable_variables_after()
        )
    finally:
        plan.abandon()


ADAPTER_BIASES = R + D  # b_down and b_up, which the table leaves out
FORMULAS = {
    "prompt tuning: l d": (
        keras_peft.PromptTuningConfig(length=L_PROMPT, init="random"),
        L_PROMPT * D,
    ),
    "prefix tuning (ejected): 2 l d x 3 x 12": (
        keras_peft.PrefixTuningConfig(length=L_PREFIX, reparam=False),
        2 * L_PREFIX * D * 3 * LAYERS,
    ),
    "adapter (attn): 2 r d x 3 x 12": (
        keras_peft.AdapterConfig(bottleneck=R, location="attn"),
        (2 * R * D + ADAPTER_BIASES) * 3 * LAYERS,
    ),
    "adapter (ffn): 2 r d x 2 x 12": (
        keras_peft.AdapterConfig(bottleneck=R),
        (2 * R * D + ADAPTER_BIASES) * 2 * LAYERS,
    ),
    "parallel adapter (ffn): 2 r d x 2 x 12": (
        keras_peft.AdapterConfig(bottleneck=R, parallel=True, scale=4.0),
        (2 * R * D + ADAPTER_BIASES) * 2 * LAYERS,
    ),
    "multi-head PA (attn): 2 r d x 3 x 12": (
        keras_peft.AdapterConfig(
            bottleneck=R, location="attn", parallel=True, multi_head=True
        ),
        # One bottleneck per head: biases H r + H d_h = H r + d.
        (2 * R * D + HEADS * R + D) * 3 * LAYERS,
    ),
    "LoRA (attn): 4 r d x 3 x 12": (
        keras_peft.LoRAConfig(rank=R, targets="attn"),
        4 * R * D * 3 * LAYERS,
    ),
    "LoRA (ffn): 10 r d x 2 x 12": (
        keras_peft.LoRAConfig(rank=R, targets="ffn"),
        10 * R * D * 2 * LAYERS,
    ),
    "MAM: 2 l d x 3 x 12 + 2 r d x 2 x 12": (
        keras_peft.MAMConfig(
            prefix_length=L_PREFIX, bottleneck=R, reparam=False
        ),
        2 * L_PREFIX * D * 3 * LAYERS
        + (2 * R * D + ADAPTER_BIASES) * 2 * LAYERS,
    ),
}


def test_counts_equal_the_formulas():
    # One test, one model: building 12 T5 layers takes seconds, and test
    # processes running parametrized cases would each build it.
    model = _t5()
    counts = {
        name: _planned_count(model, c) for name, (c, _) in FORMULAS.items()
    }
    wrong = {
        name: (counts[name], expected)
        for name, (_, expected) in FORMULAS.items()
        if counts[name] != expected
    }
    assert not wrong, f"(counted, formula): {wrong}"
