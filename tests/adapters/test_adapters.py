"""Sequential and parallel adapters on BERT and T5 (Houlsby et al. 2019,
He et al. 2022): where they act, their formulas, composition and errors."""

import keras
import numpy as np
import pytest

import keras_peft
from keras_peft.core import architectures
from keras_peft.layers import Adapter
from keras_peft.layers import ParallelAdapter
from keras_peft.layers.site_host import SiteHost
from tests import helpers
from tests import t5_decoding

R = 3
SCALE = 4.0


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        shape = variable.shape
        value = 0.3 * rng.normal(size=shape) if shape else 1.7
        variable.assign(np.asarray(value, "float32"))


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _delta(module, z):
    """The adapter in NumPy: s * (relu(z W_down + b_down) W_up + b_up)."""
    hidden = np.maximum(
        _np(z) @ module.down_kernel.numpy() + module.down_bias.numpy(), 0
    )
    scale = module.scale
    if module.learned_scale is not None:
        scale = module.learned_scale.numpy()
    return scale * (hidden @ module.up_kernel.numpy() + module.up_bias.numpy())


def _modules(host):
    """The one adapter module a site host holds."""
    assert isinstance(host, SiteHost)
    modules = host.parallel_modules + host.sequential_modules
    assert len(modules) == 1
    return modules[0]


def _adapted(case_name, parallel):
    case = helpers.MODEL_CASES[case_name]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.AdapterConfig(
            bottleneck=R, location="both", parallel=parallel, scale=SCALE
        ),
    )
    _randomize(model)
    backbone = case.backbone(model)
    sites = architectures.resolve_model(model).architecture.sites(backbone)
    return backbone, {site.name: site for site in sites}


def _adapt(h, x, module):
    """What the site's output becomes: parallel reads x, sequential h."""
    if isinstance(module, ParallelAdapter):
        return _np(h) + _delta(module, x)
    assert isinstance(module, Adapter)
    return _np(h) + _delta(module, h)


@pytest.mark.parametrize("parallel", [False, True])
def test_bert_block_equals_the_formula(parallel):
    backbone, sites = _adapted("bert_backbone", parallel)
    block = backbone.transformer_layers[0]
    attention, ffn = sites["encoder_0/self_attention"], sites["encoder_0/ffn"]
    u = np.random.default_rng(1).normal(size=(2, 6, 16)).astype("float32")

    # Post-LN BERT: LN(u + attn'), then LN(x + ffn'), each sub-layer's output
    # changed by its adapter before the residual add.
    a = attention.output_layer(query=u, value=u)
    a = _adapt(a, u, _modules(block._self_attention_layer))
    x = _np(block._self_attention_layer_norm(u + a))
    f = ffn.output_layer(ffn.input_layer(x))
    f = _adapt(f, x, _modules(block._feedforward_output_dense))
    expected = _np(block._feedforward_layer_norm(x + f))

    np.testing.assert_allclose(_np(block(u)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parallel", [False, True])
def test_t5_blocks_equal_the_formula(parallel):
    backbone, sites = _adapted("t5_backbone", parallel)
    rng = np.random.default_rng(2)
    u = rng.normal(size=(2, 5, 16)).astype("float32")
    encoded = rng.normal(size=(2, 4, 16)).astype("float32")

    def ffn(block, site, x):
        # Pre-LN T5: x + ffn'(LN(x)), the FFN gated by default.
        n = block.layer_norm(x)
        hidden = site.input_layer(n)
        if block.use_gated_activation:
            hidden = hidden * block.gate_projector(n)
        f = site.output_layer(hidden)
        return x + _adapt(f, n, _modules(block.output_projector))

    # Encoder block: x + attn'(LN(u)), then the FFN.
    block = backbone.encoder_transformer_layers[0]
    n = block.self_attention_layer_norm(u)
    a, _, _ = sites["encoder_0/self_attention"].output_layer(n)
    x = u + _adapt(a, n, _modules(block.self_attention))
    expected = ffn(block, sites["encoder_0/ffn"], x)
    output, _ = block(u)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)

    # Decoder block: causal self-attention, cross-attention, FFN.
    block = backbone.decoder_transformer_layers[0]
    mask = block._compute_self_attention_mask(u, None, None, None)
    n = block.self_attention_layer_norm(u)
    a, _, _ = sites["decoder_0/self_attention"].output_layer(n, mask=mask)
    x = u + _adapt(a, n, _modules(block.self_attention))
    n = block.cross_attention_layer_norm(x)
    c, _, _ = sites["decoder_0/cross_attention"].output_layer(
        n, key_value_states=encoded
    )
    x = x + _adapt(c, n, _modules(block.cross_attention))
    expected = ffn(block, sites["decoder_0/ffn"], x)
    output, _ = block(u, encoder_hidden_states=encoded, use_causal_mask=True)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "config,sites",
    [
        (keras_peft.AdapterConfig(bottleneck=2), {"ffn"}),
        (keras_peft.AdapterConfig(bottleneck=2, location="attn"), {"attn"}),
        (keras_peft.AdapterConfig(bottleneck=2, style="pfeiffer"), {"ffn"}),
        (
            keras_peft.AdapterConfig(bottleneck=2, style="houlsby"),
            {"attn", "ffn"},
        ),
    ],
)
def test_locations_and_styles_choose_the_sites(config, sites):
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    keras_peft.apply(model, config)
    block = model.transformer_layers[0]
    hosts = {
        "attn": block._self_attention_layer,
        "ffn": block._feedforward_output_dense,
    }
    assert {k for k, v in hosts.items() if isinstance(v, SiteHost)} == sites
    # Houlsby trains the layer norms of the adapted sub-layers, as the paper.
    norms = [
        block._self_attention_layer_norm,
        block._feedforward_layer_norm,
    ]
    trains = [all(v.trainable for v in norm.weights) for norm in norms]
    assert trains == [config.style == "houlsby"] * 2


def test_targets_select_sites_by_name():
    case = helpers.MODEL_CASES["t5_backbone"]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.AdapterConfig(
            bottleneck=2, location="attn", targets=["cross_attention"]
        ),
    )
    for block in model.decoder_transformer_layers:
        assert isinstance(block.cross_attention, SiteHost)
        assert not isinstance(block.self_attention, SiteHost)
    for block in model.encoder_transformer_layers:
        assert not isinstance(block.self_attention, SiteHost)


def test_adapters_compose_with_lora_and_prefix_on_the_same_layers():
    """He et al.'s unions: prefix + parallel adapter on one attention, LoRA
    and two adapters on one FFN, over several `apply` calls."""
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    before = case.outputs(model)
    keras_peft.apply(
        model,
        [
            keras_peft.AdapterConfig(bottleneck=2, location="both"),
            keras_peft.LoRAConfig(rank=2, targets=["output_projector"]),
        ],
    )
    keras_peft.apply(
        model,
        [
            keras_peft.PrefixTuningConfig(length=2, reparam=False),
            keras_peft.AdapterConfig(
                bottleneck=2, location="both", parallel=True, scale=4.0
            ),
        ],
    )
    groups = dict(keras_peft.trainable_summary(model).groups)
    assert set(groups) == {"adapter", "lora", "prefix_tuning"}
    # Two adapters of each site: (2 r d + r + d) each.
    sites = 3 * 2 + 2 * 2  # attentions and FFNs of the 2 + 2 blocks
    d = helpers.T5["hidden_dim"]
    assert groups["adapter"] == 2 * sites * (2 * 2 * d + 2 + d)
    block = model.backbone.decoder_transformer_layers[0]
    host = block.output_projector
    assert isinstance(host, SiteHost)
    assert type(host.base_layer).__name__ == "LoRADense"
    assert [m.name for m in host.parallel_modules] == ["ffn_parallel_adapter"]
    assert [m.name for m in host.sequential_modules] == ["ffn_adapter"]
    assert type(block.self_attention.base_layer).__name__ == (
        "T5PrefixAttention"
    )
    # Every new variable has a path of its own (what adapter files key on).
    paths = [v.path for v in model.trainable_weights]
    assert len(paths) == len(set(paths))

    _randomize(model)
    after = case.outputs(model)
    assert np.abs(after - before).max() > 1e-3


@pytest.mark.parametrize("lora_first", [True, False])
def test_lora_and_adapters_on_one_ffn_start_exactly_at_the_base(lora_first):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    before = case.outputs(model)
    configs = [
        keras_peft.LoRAConfig(rank=2, targets="ffn"),
        keras_peft.AdapterConfig(bottleneck=2),
        keras_peft.AdapterConfig(bottleneck=2, parallel=True, scale=4.0),
    ]
    if not lora_first:
        configs.reverse()
    for config in configs:
        keras_peft.apply(model, config)
    host = model.backbone.transformer_layers[0]._feedforward_output_dense
    assert type(host.base_layer).__name__ == "LoRADense"
    # Exact: every update is zero and adds exactly 0.
    helpers.assert_outputs_equal(case.outputs(model), before)
    _randomize(model)
    assert np.abs(case.outputs(model) - before).max() > 1e-3


def test_two_adapters_at_one_site_in_one_apply_get_their_own_names(tmp_path):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    configs = [
        keras_peft.AdapterConfig(bottleneck=2),
        keras_peft.AdapterConfig(bottleneck=3, location="both"),
    ]
    keras_peft.apply(model, configs)
    host = model.backbone.transformer_layers[0]._feedforward_output_dense
    assert [m.name for m in host.sequential_modules] == [
        "ffn_adapter",
        "ffn_adapter_1",
    ]
    paths = [v.path for v in model.trainable_weights]
    assert len(paths) == len(set(paths))
    _randomize(model)
    expected = case.outputs(model)
    keras_peft.save_adapter(model, str(tmp_path / "a"))
    fresh = case.build()
    keras_peft.load_adapter(fresh, str(tmp_path / "a"))
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(fresh), expected)


def test_t5_cached_decoding_with_adapters_at_every_site():
    """keras-hub's cached decoder runs the hosts one token at a time, the
    FFN's input handed over by its tap."""
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    keras_peft.apply(
        model,
        [
            keras_peft.AdapterConfig(
                bottleneck=2, location="both", parallel=True, scale=4.0
            ),
            keras_peft.AdapterConfig(bottleneck=2, location="both"),
            keras_peft.LoRAConfig(rank=2, targets="all"),
        ],
    )
    _randomize(model)
    t5_decoding.assert_cached_decoding_matches(model)
    t5_decoding.assert_changes_logits(model)


def test_unload_lora_and_eject_prefix_inside_site_hosts():
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    keras_peft.apply(
        model, keras_peft.AdapterConfig(bottleneck=2, location="both")
    )
    keras_peft.apply(
        model,
        [
            keras_peft.LoRAConfig(rank=2, targets="all"),
            keras_peft.PrefixTuningConfig(length=2, reparam_hidden=4),
        ],
    )
    _randomize(model)
    expected = case.outputs(model)
    keras_peft.eject_prefix(model)
    keras_peft.merge_lora(model, unload=True)
    # Close: the merged kernel and the ejected prefix are computed once,
    # apart from the pass, and round differently.
    helpers.assert_outputs_close(case.outputs(model), expected, atol=1e-4)
    block = model.backbone.decoder_transformer_layers[0]
    assert isinstance(block.output_projector, SiteHost)
    assert type(block.output_projector.base_layer).__name__ == "Dense"
    groups = dict(keras_peft.trainable_summary(model).groups)
    assert set(groups) == {"adapter", "prefix_tuning"}


def test_a_conflicting_union_names_both_configs_and_changes_nothing():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(model, keras_peft.AdapterConfig(bottleneck=2))
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="query.*rank=2.*rank=4"):
        keras_peft.apply(
            model,
            [
                keras_peft.AdapterConfig(bottleneck=2, location="attn"),
                keras_peft.LoRAConfig(rank=2, targets=["query"]),
                keras_peft.LoRAConfig(rank=4, targets=["query"]),
            ],
        )
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bottleneck": 0}, "bottleneck"),
        ({"bottleneck": -1}, "bottleneck"),
        ({"location": "mlp"}, "mlp"),
        ({"style": "adapterhub"}, "adapterhub"),
        ({"style": "houlsby", "parallel": True}, "houlsby"),
        ({"style": "pfeiffer", "location": "attn"}, "pfeiffer"),
        ({"activation": "swishy"}, "swishy"),
        ({"scale": 0}, "scale"),
        ({"scale": -4.0}, "scale"),
        ({"scale": "fixed"}, "fixed"),
        ({"parallel": "yes"}, "parallel"),
        ({"multi_head": True, "parallel": True}, "multi_head"),
        ({"multi_head": True, "location": "attn"}, "multi_head"),
        ({"multi_head": 1, "parallel": True, "location": "attn"}, "multi_head"),
        ({"targets": []}, "targets"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_peft.AdapterConfig(**kwargs)


def test_targets_matching_no_site_raise_and_change_nothing():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="cross_attention.*encoder_0/ffn"):
        keras_peft.apply(
            model,
            keras_peft.AdapterConfig(targets=["cross_attention"]),
        )
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_config_round_trips_through_json():
    config = keras_peft.AdapterConfig(
        bottleneck=8, style="houlsby", scale="learned", targets=["encoder_0/.*"]
    )
    assert config.location == "both"
    restored = keras_peft.config_from_dict(config.to_dict())
    assert restored == config


def _head_deltas(module, queries):
    """Each head's parallel adapter in NumPy, from its queries: `(..., H,
    d_h)` -> `(..., H, d_h)`."""
    hidden = np.einsum("bthk,khr->bthr", queries, module.down_kernel.numpy())
    hidden = np.maximum(hidden + module.down_bias.numpy(), 0)
    up = np.einsum("bthr,hrk->bthk", hidden, module.up_kernel.numpy())
    return module.scale * (up + module.up_bias.numpy())


@pytest.mark.parametrize("case_name", ["bert_backbone", "t5_backbone"])
def test_multi_head_adapter_equals_adding_to_the_head_outputs(case_name):
    """He et al.'s multi-head PA adds each head's delta, computed from the
    head's query, to that head's output *before* the output projection; the
    layer adds its projection after it. By linearity the two agree: here the
    literal form runs the frozen attention with its output projection fed
    `heads + Delta`."""
    case = helpers.MODEL_CASES[case_name]
    model = case.build()
    keras_peft.apply(
        model,
        keras_peft.AdapterConfig(
            bottleneck=R,
            location="attn",
            parallel=True,
            multi_head=True,
            scale=SCALE,
        ),
    )
    _randomize(model)
    backbone = case.backbone(model)
    sites = architectures.resolve_model(model).architecture.sites(backbone)
    site = next(s for s in sites if s.kind != architectures.FFN)
    host = next(
        layer
        for layer in backbone._flatten_layers()
        if isinstance(layer, SiteHost) and layer.base_layer is site.output_layer
    )
    module = _modules(host)
    assert isinstance(module, keras_peft.layers.MultiHeadParallelAdapter)
    heads, width = module.num_heads, module.head_dim
    assert module.down_kernel.shape == (width, heads, R)
    assert module.up_kernel.shape == (heads, R, width)

    attention = site.output_layer
    bert = case_name == "bert_backbone"
    names = (
        ("_query_dense", "_output_dense")
        if bert
        else (
            "query_projector",
            "output_projector",
        )
    )
    query, projection = (getattr(attention, name) for name in names)
    x = np.random.default_rng(3).normal(size=(2, 5, 16)).astype("float32")
    queries = _np(query(x)).reshape(2, 5, heads, width)
    deltas = _head_deltas(module, queries)

    def literal(head_outputs):
        # BERT's heads come as (b, t, H, d_h), T5's concatenated.
        shaped = np.reshape(deltas, _np(head_outputs).shape)
        return projection(head_outputs + shaped)

    def run(layer):
        return layer(x, x) if bert else layer(x)[0]

    object.__setattr__(attention, names[1], literal)
    try:
        expected = _np(run(attention))
    finally:
        object.__setattr__(attention, names[1], projection)
    # Different summation orders (the projection of a sum vs a sum of
    # projections): float32 rounding only.
    np.testing.assert_allclose(_np(run(host)), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected - _np(run(attention))).max() > 1e-2


def test_multi_head_adapter_goes_through_lora_on_the_output_projection():
    """With LoRA on the attention's output projection, the heads' deltas go
    through the kernel the attention uses (`W_o + s A B`), so merging LoRA
    into `W_o` changes nothing."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(
        model,
        [
            keras_peft.AdapterConfig(
                bottleneck=2, location="attn", parallel=True, multi_head=True
            ),
            keras_peft.LoRAConfig(rank=2, targets=["attention_output"]),
        ],
    )
    _randomize(model)
    before = case.outputs(model)
    keras_peft.merge_lora(model)
    # Merged vs unmerged LoRA: different kernels, float32 rounding.
    helpers.assert_outputs_close(case.outputs(model), before)
