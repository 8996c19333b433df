"""Several named adapters on one model: switching, disabling, deleting,
saving and loading by name, on every backend."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from keras_peft.core import switching
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.kept_variable import KeptVariable
from keras_peft.layers.lora_dense import LoRADense
from keras_peft.layers.prefix_attention import PrefixAttention
from keras_peft.layers.prefix_reparametrization import PrefixReparametrization
from tests import helpers

BACKEND = keras.backend.backend()

# What several adapters may be made of: LoRA, the bottleneck adapters,
# prefixes, MAM, and prompts (of any lengths, beside adapters without one).
SWITCHABLE = {
    "prompt": lambda: keras_peft.PromptTuningConfig(length=3, init="random"),
    # Longer than "prompt": shorter prompts leave positions unused.
    "prompt5": lambda: keras_peft.PromptTuningConfig(length=5, init="random"),
    "prompt_and_lora": lambda: [
        keras_peft.PromptTuningConfig(length=3, init="random"),
        keras_peft.LoRAConfig(rank=2),
    ],
    "lora": lambda: keras_peft.LoRAConfig(rank=4, alpha=8),
    # Prefixes trained through an MLP (one MLP layer, a slot each).
    "prefix_mlp": lambda: keras_peft.PrefixTuningConfig(
        length=3, reparam_hidden=8
    ),
    "mam_mlp": lambda: keras_peft.MAMConfig(
        prefix_length=3, bottleneck=4, reparam_hidden=8, activation="gelu"
    ),
    # Other ranks and scales than "lora" at the same layers.
    "lora_rank2": lambda: keras_peft.LoRAConfig(
        rank=2, alpha=3, use_rslora=True
    ),
    "lora_rank6": lambda: keras_peft.LoRAConfig(rank=6, alpha=12),
    "lora_rank3": lambda: keras_peft.LoRAConfig(rank=3, alpha=5),
    # "adapters"' layers, other widths and fixed scales, and a sequential
    # adapter beside "lora_ffn_and_adapter"'s.
    "adapters_wide": lambda: (
        _bottlenecks(6, 2, head_scale=0.5)
        + [keras_peft.AdapterConfig(bottleneck=2, scale=3.0, activation="gelu")]
    ),
    "prefix": lambda: keras_peft.PrefixTuningConfig(length=3, reparam=False),
    "prefix_and_lora": lambda: [
        keras_peft.PrefixTuningConfig(length=3, reparam=False),
        keras_peft.LoRAConfig(rank=2, targets="ffn"),
    ],
    # MAM with its prefix trained directly ("mam_mlp": through its MLP).
    "mam": lambda: keras_peft.MAMConfig(
        prefix_length=3, bottleneck=4, reparam=False, activation="gelu"
    ),
    "lora_ffn_and_adapter": lambda: [
        keras_peft.LoRAConfig(rank=2, targets="ffn"),
        keras_peft.AdapterConfig(bottleneck=4, activation="gelu"),
    ],
    "adapters": lambda: _bottlenecks(4, 4),
    # Base variables each adapter trains: its own copies beside others.
    "bitfit": lambda: keras_peft.BitFitConfig(),
    "lora_bias": lambda: keras_peft.LoRAConfig(rank=2, bias="all"),
    "houlsby": lambda: keras_peft.AdapterConfig(
        style="houlsby", bottleneck=4, activation="gelu"
    ),
    "houlsby_wide": lambda: keras_peft.AdapterConfig(
        style="houlsby", bottleneck=6, activation="gelu"
    ),
}


def _bottlenecks(width, head_width, head_scale=1.0):
    """Parallel adapters (learned scale) at the FFN and attention, and
    multi-head ones at the attention."""
    # gelu: a ReLU bottleneck this narrow can be dead on every [CLS]
    # token, and the gradient checks want every weight reached.
    return [
        keras_peft.AdapterConfig(
            bottleneck=width,
            location="both",
            parallel=True,
            scale="learned",
            activation="gelu",
        ),
        keras_peft.AdapterConfig(
            bottleneck=head_width,
            location="attn",
            parallel=True,
            multi_head=True,
            activation="gelu",
            scale=head_scale,
        ),
    ]


def _randomize(model, variables, seed):
    rng = np.random.default_rng(seed)
    for variable in variables:
        value = 0.3 * rng.normal(size=variable.shape)
        variable.assign(value.astype(variable.dtype))


def _named_model(case, adapters, seed=0):
    """`case`'s model with each `(name, configs)` of `adapters` applied and
    given random weights of its own (and its own head, on a task)."""
    model = case.build()
    for index, (name, configs) in enumerate(adapters):
        keras_peft.apply(model, configs, name=name)
        new = _adapter_variables(model, name)
        if index == 0:
            new = model.trainable_weights
        _randomize(model, new, seed + index)
    return model


def _adapter_variables(model, name):
    """Adapter `name`'s trainable variables: its slots (a bank's row for a
    slot after the first) and its head."""
    return [variable for _, variable in switching.named_variables(model, name)]


def _element_owners(model):
    """`id(variable)` to `{adapter name: mask of the elements of its
    slot}` for each variable of the model's adapter layers (a bank holds
    several adapters' slots, and padding that belongs to none)."""
    owners = {}
    for layer in _adapter_layers(model):
        for slot, name in enumerate(layer.slot_names):
            for variable in layer.slot_variables(slot):
                target = getattr(variable, "bank", variable)
                masks = owners.setdefault(id(target), {})
                mask = masks.setdefault(name, np.zeros(target.shape, bool))
                mask[getattr(variable, "index", ...)] = True
    return owners


def _mask(owners, variable, names):
    """The mask of `variable`'s elements held for any of `names`."""
    if id(variable) not in owners:
        raise AssertionError(f"{variable.path} belongs to no adapter")
    mask = np.zeros(variable.shape, bool)
    for name, own in owners[id(variable)].items():
        if name in names:
            mask |= own
    return mask


def _assert_gradients_only_in(grads, variables, masks):
    """Each gradient is exactly zero outside its variable's mask (inactive
    adapters, a bank's padding) and not all zero inside a non-empty one."""
    for variable, grad, mask in zip(variables, grads, masks):
        grad = np.zeros(variable.shape) if grad is None else np.asarray(grad)
        assert not np.any(grad[~mask]), variable.path
        if mask.any():
            assert np.any(grad[mask]), variable.path


def _outputs_by_name(model, case):
    outputs = {}
    for name in keras_peft.adapter_names(model):
        keras_peft.set_active(model, name)
        outputs[name] = case.outputs(model)
    return outputs


@pytest.mark.parametrize(
    "model_name, methods",
    [
        ("bert_classifier", ("lora", "lora_ffn_and_adapter", "adapters")),
        ("t5_backbone", ("lora", "adapters")),
        ("bert_classifier", ("prompt", "prompt_and_lora")),
        ("t5_backbone", ("prompt", "prompt_and_lora")),
        # Prompts of other lengths, and an adapter without one.
        ("bert_classifier", ("lora", "prompt5", "prompt_and_lora")),
        ("t5_backbone", ("prompt", "lora", "prompt5")),
        # The LoRA adapter has no prefix: the others' are masked out.
        ("bert_classifier", ("prefix", "mam", "lora")),
        ("t5_backbone", ("prefix", "prefix_and_lora", "lora")),
        ("t5_backbone", ("prefix_mlp", "mam_mlp", "lora")),
        # Base variables kept per adapter, beside adapters keeping none.
        ("bert_classifier", ("bitfit", "lora", "lora_bias")),
        # LoRA wrapping layers whose biases two adapters already keep.
        ("bert_classifier", ("bitfit", "houlsby", "lora_bias")),
        ("bert_classifier", ("lora", "houlsby", "bitfit", "prefix")),
        ("t5_backbone", ("houlsby", "lora", "houlsby_wide")),
    ],
)
def test_each_adapter_computes_what_it_computes_alone(
    model_name, methods, tmp_path
):
    """Switching gives each adapter's outputs: those of a model holding
    only that adapter (loaded from the bundle saved by name)."""
    case = helpers.MODEL_CASES[model_name]
    adapters = [(m, SWITCHABLE[m]()) for m in methods]
    model = _named_model(case, adapters)
    assert keras_peft.adapter_names(model) == methods
    assert keras_peft.active_adapter(model) == methods[0]
    # The int32 switches never train.
    assert all("float" in str(v.dtype) for v in model.trainable_weights)
    outputs = _outputs_by_name(model, case)
    for name in methods:
        keras_peft.save_adapter(model, tmp_path / name, name=name)
        with open(tmp_path / name / "adapter_config.json") as f:
            assert json.load(f)["adapter_name"] == name
        alone = case.build()
        keras_peft.load_adapter(alone, str(tmp_path / name))
        # Different ops: a stacked, gathered weight against the variable
        # (and, beside a longer prompt, attention over more, masked keys).
        computed = case.outputs(alone)
        helpers.assert_outputs_close(
            computed, prompted_like(outputs[name], computed), 1e-6
        )
    # The adapters differ: each switch changed the outputs.
    first, *rest = methods
    for name in rest:
        pairs = zip(
            keras.tree.flatten(outputs[first]),
            keras.tree.flatten(outputs[name]),
        )
        assert not all(np.allclose(x, y, atol=1e-3) for x, y in pairs)
    # Loaded back by name beside each other, they switch the same way.
    both = case.build()
    for name in methods:
        keras_peft.load_adapter(both, str(tmp_path / name), name=name)
    assert keras_peft.active_adapter(both) == methods[0]
    for name, expected in _outputs_by_name(both, case).items():
        helpers.assert_outputs_close(expected, outputs[name], 1e-6)


def prompted_like(outputs, like):
    """`outputs` cut to the shapes of `like`: those of a model whose prompt
    is shorter than the longest among the adapters that computed `outputs`
    (T5's encoder output spans the prompt). An adapter's prompt and tokens
    come first, then the positions a longer prompt of another adapter
    adds, masked out."""

    def cut(x, y):
        x, shape = np.asarray(x), np.shape(y)
        if x.shape == shape:
            return x
        axis = next(i for i, (a, b) in enumerate(zip(x.shape, shape)) if a != b)
        assert x.shape[axis] > shape[axis], (x.shape, shape)
        return np.take(x, np.arange(shape[axis]), axis=axis)

    return keras.tree.map_structure(cut, outputs, like)


def _count_traces(monkeypatch):
    """Counts Python calls of `LoRADense.call`: one per trace in a compiled
    function."""
    calls = []
    original = LoRADense.call

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoRADense, "call", counting)
    return calls


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch runs eagerly: nothing is traced"
)
@pytest.mark.parametrize(
    "methods",
    [
        ("lora", "lora"),
        # A prompt and none: the sequence keeps the prompt's positions.
        ("prompt_and_lora", "lora"),
        # Base variables kept per adapter: the overlay reads the switch.
        ("bitfit", "lora_bias"),
    ],
)
def test_set_active_retraces_neither_predict_nor_fit(monkeypatch, methods):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [(n, SWITCHABLE[m]()) for n, m in zip("ab", methods)]
    )
    expected = _outputs_by_name(model, case)
    calls = _count_traces(monkeypatch)
    helpers.compile(
        model,
        optimizer=keras.optimizers.SGD(0.01),
        loss=case.loss,
    )
    predictions = {}
    for name in ("a", "b", "a", "b"):
        keras_peft.set_active(model, name)
        predictions[name] = model.predict(case.inputs(), verbose=0)
        if len(calls) and "traced" not in predictions:
            predictions["traced"] = len(calls)
    assert len(calls) == predictions["traced"]
    for name in ("a", "b"):
        # Compiled against eager: float tolerance.
        np.testing.assert_allclose(predictions[name], expected[name], atol=1e-5)
    traced = len(calls)
    for name in ("a", "b", "a"):
        keras_peft.set_active(model, name)
        model.fit(case.inputs(), case.labels(), epochs=1, verbose=0)
        if name == "a" and len(calls) > traced:
            traced = len(calls)  # the first fit traces its step
    assert len(calls) == traced


@pytest.mark.parametrize(
    "methods",
    [
        ("lora_ffn_and_adapter", "lora"),
        # Copies of one base variable in both: each adapter trains its own.
        ("bitfit", "lora_bias"),
        ("houlsby", "bitfit"),
    ],
)
def test_only_the_active_adapter_gets_gradients_and_trains(methods):
    """Inactive adapters get exactly zero gradients; a fit (Adam, fresh)
    leaves them and the frozen base bit-identical and trains the active
    adapter and its head."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [(n, SWITCHABLE[m]()) for n, m in zip("ab", methods)]
    )
    keras_peft.set_active(model, "b")
    inputs, labels = case.inputs(), case.labels()
    trainable = model.trainable_weights
    owners = _element_owners(model)

    def moves(variable):
        return _mask(owners, variable, ("b",))

    def loss(*_):
        return case.loss(labels, model(inputs, training=False))

    _, grads = helpers.gradients(loss, trainable)
    _assert_gradients_only_in(grads, trainable, [moves(v) for v in trainable])
    _fit_moves_only(model, inputs, labels, case.loss, moves)


def _fit_moves_only(model, inputs, labels, loss, moves):
    """Fits `model` 2 epochs with a fresh Adam and checks that exactly the
    elements of trainable variables in the mask `moves(variable)` changed
    (some of each non-empty mask)."""
    helpers.compile(model, optimizer=keras.optimizers.Adam(0.01), loss=loss)
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]
    model.fit(inputs, labels, epochs=2, verbose=0)
    for variable, old in zip(model.weights, before):
        new = keras.ops.convert_to_numpy(variable)
        mask = (
            moves(variable)
            if variable.trainable
            else np.zeros(variable.shape, bool)
        )
        if mask.any():
            assert not np.array_equal(new[mask], old[mask]), variable.path
        # Exact: frozen weights are never written, and a zero gradient
        # from a fresh Adam updates by 0.
        np.testing.assert_array_equal(new[~mask], old[~mask], variable.path)


def _owner(model, variable):
    """The adapter a trainable variable belongs to (its slot's name)."""
    for layer in _adapter_layers(model):
        for slot, name in enumerate(layer.slot_names):
            if any(v is variable for v in layer.slot_variables(slot)):
                return name
    raise AssertionError(f"{variable.path} belongs to no adapter")


def _adapter_layers(model):
    from keras_peft.core import layer_tree

    return [
        layer
        for layer, _ in layer_tree.iter_layers(model)
        if isinstance(layer, AdapterLayer)
    ]


@pytest.mark.parametrize(
    "model_name, method",
    [
        ("bert_classifier", "all_methods"),
        ("t5_seq2seq", "all_methods"),
        ("bert_masked_lm", "mam"),
    ],
)
def test_disabled_gives_the_base_outputs_exactly(model_name, method):
    case = helpers.MODEL_CASES[model_name]
    model = case.build()
    base = case.outputs(model)
    keras_peft.apply(model, helpers.METHOD_CASES[method].config(case))
    groups = keras_peft.variable_groups(model)
    _randomize(
        model, [v for g, vs in groups.items() if g != "head" for v in vs], 0
    )
    adapted = case.outputs(model)
    with keras_peft.disabled(model) as same:
        assert same is model
        helpers.assert_outputs_equal(case.outputs(model), base)
    helpers.assert_outputs_equal(case.outputs(model), adapted)
    with pytest.raises(RuntimeError, match="inside"):
        with keras_peft.disabled(model):
            raise RuntimeError("inside")
    helpers.assert_outputs_equal(case.outputs(model), adapted)


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch runs eagerly: nothing is traced"
)
def test_disabled_applies_to_a_compiled_predict():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    base = model.predict(case.inputs(), verbose=0)
    keras_peft.apply(model, SWITCHABLE["lora"]())
    _randomize(model, keras_peft.variable_groups(model)["lora"], 0)
    adapted = model.predict(case.inputs(), verbose=0)
    with keras_peft.disabled(model):
        # Same compiled graph of the same ops on the same values.
        helpers.assert_outputs_equal(
            model.predict(case.inputs(), verbose=0), base
        )
    helpers.assert_outputs_equal(
        model.predict(case.inputs(), verbose=0), adapted
    )


def test_delete_adapter_keeps_the_others_and_frees_their_layers():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case,
        [
            ("a", SWITCHABLE["lora"]()),
            ("b", SWITCHABLE["lora_ffn_and_adapter"]()),
            ("c", SWITCHABLE["lora"]()),
        ],
    )
    expected = _outputs_by_name(model, case)
    count = len(model.weights)
    keras_peft.set_active(model, "c")
    keras_peft.delete_adapter(model, "b")
    assert keras_peft.adapter_names(model) == ("a", "c")
    # b's layers alone (FFN LoRA, adapters) are gone, and its slots.
    assert len(model.weights) < count
    assert not any("b" in layer.slot_names for layer in _adapter_layers(model))
    for name, outputs in _outputs_by_name(model, case).items():
        helpers.assert_outputs_equal(outputs, expected[name])
    # Deleting the adapter of slot 0 hands slot 0 to the next one.
    keras_peft.set_active(model, "c")
    keras_peft.delete_adapter(model, "a")
    assert keras_peft.adapter_names(model) == ("c",)
    helpers.assert_outputs_close(case.outputs(model), expected["c"], 1e-6)


@pytest.mark.parametrize("model_name", ["bert_classifier", "t5_backbone"])
def test_deleting_the_last_prompt_takes_the_prompt_layers_away(model_name):
    case = helpers.MODEL_CASES[model_name]
    model = _named_model(
        case, [("a", SWITCHABLE["prompt5"]()), ("b", SWITCHABLE["lora"]())]
    )
    expected = _outputs_by_name(model, case)
    keras_peft.delete_adapter(model, "a")
    assert not [
        layer
        for layer in _adapter_layers(model)
        if layer.method == "prompt_tuning"
    ]
    outputs = case.outputs(model)
    # The sequence is the inputs' again; attention over fewer keys.
    helpers.assert_outputs_close(
        outputs, prompted_like(expected["b"], outputs), 1e-6
    )
    keras_peft.apply(model, SWITCHABLE["prompt"](), name="c")
    assert keras_peft.adapter_names(model) == ("b", "c")


def test_deleting_an_adapter_takes_its_taps_away(tmp_path):
    """A parallel adapter reading the FFN's input records it at another
    layer (a tap): deleting the adapter takes both away, and the model
    saves and loads as one never given it."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case,
        [
            ("a", SWITCHABLE["lora"]()),
            ("b", SWITCHABLE["adapters"]()),
            ("c", SWITCHABLE["lora"]()),
        ],
    )
    expected = _outputs_by_name(model, case)
    keras_peft.set_active(model, "c")
    keras_peft.delete_adapter(model, "b")
    from keras_peft.core import layer_tree
    from keras_peft.layers.site_host import SiteHost

    assert not any(
        isinstance(layer, SiteHost)
        for layer, _ in layer_tree.iter_layers(model)
    )
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    for name, outputs in _outputs_by_name(restored, case).items():
        helpers.assert_outputs_equal(outputs, expected[name])


def test_slots_made_while_the_backbone_is_frozen_save_and_load(tmp_path):
    """Slots made (added, or made anew when slot 0's adapter goes) while
    the backbone is frozen sit where a fresh model's do: `.keras` files
    list a layer's variables by where they were made."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("a", SWITCHABLE["lora"]())])
    case.backbone(model).trainable = False
    for name in ("b", "c"):
        keras_peft.apply(model, SWITCHABLE["lora_rank2"](), name=name)
    _randomize(model, keras_peft.variable_groups(model)["lora"], 1)
    expected = _outputs_by_name(model, case)
    keras_peft.delete_adapter(model, "a")
    case.backbone(model).trainable = True
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    for name, outputs in _outputs_by_name(restored, case).items():
        helpers.assert_outputs_close(outputs, expected[name], 1e-6)


@pytest.mark.parametrize(
    "methods, kind, widths",
    [
        (
            {
                "a": "lora",
                "b": "lora_rank2",
                "c": "lora_rank6",
                "d": "lora_rank3",
            },
            "lora",
            [4, 2, 6, 3],
        ),
        (
            {
                "a": "adapters",
                "b": "adapters_wide",
                "c": "lora_ffn_and_adapter",
            },
            "adapter",
            [4, 6],
        ),
        (
            {
                "a": "prompt",
                "b": "prompt5",
                "c": "lora",
                "d": "prompt_and_lora",
            },
            "prompt_tuning",
            [3, 5, 3],
        ),
    ],
)
def test_adapters_of_other_ranks_widths_and_lengths_share_a_layer(
    methods, kind, widths, tmp_path
):
    """Each slot keeps its LoRA rank and scale, its bottleneck width and
    scale, or its prompt length (padded with zero components where slots
    are stacked; a shorter prompt's unused positions masked out): every
    adapter computes what it computes alone, also after the adapter of
    slot 0 is deleted (its variables are made anew in another shape) and
    through a `.keras` file."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [(name, SWITCHABLE[m]()) for name, m in methods.items()]
    )
    layer = next(
        layer
        for layer in _adapter_layers(model)
        if layer.method == kind
        and len(layer.slot_names) > 1
        and layer.padded_axes
    )
    first = layer.adapter_variables[0].name
    axis = layer.padded_axes[first]
    assert [
        tuple(layer.slot_variables(slot)[0].shape)[axis]
        for slot in range(len(layer.slot_names))
    ] == widths
    # The slots after slot 0, in one bank padded to the widest.
    bank = layer.bank_variables[0]
    assert bank.path.endswith(f"/{first}__slots")
    assert tuple(bank.shape)[0] == len(widths) - 1
    assert tuple(bank.shape)[1:][axis] == max(widths[1:])
    expected = _outputs_by_name(model, case)
    for name in methods:
        keras_peft.save_adapter(model, tmp_path / name, name=name)
        alone = case.build()
        keras_peft.load_adapter(alone, str(tmp_path / name))
        # Padded: sums over more (zero) components.
        helpers.assert_outputs_close(case.outputs(alone), expected[name], 1e-6)
    names = list(methods)
    server = keras_peft.multi_task(model, names)
    ids = np.array([2, 0, 1, len(names) - 1], "int32")
    rows = helpers.numpy(server({**case.inputs(), "task_ids": ids}))
    for row, task in enumerate(ids):
        helpers.assert_outputs_close(
            rows[row], expected[names[task]][row], 1e-5
        )
    last = names[-1]
    keras_peft.set_active(model, last)
    if len(names) > 3:
        # A middle slot: the slots after it keep their settings.
        keras_peft.delete_adapter(model, names[2])
        for name, outputs in _outputs_by_name(model, case).items():
            helpers.assert_outputs_close(outputs, expected[name], 1e-6)
        keras_peft.set_active(model, last)
    keras_peft.delete_adapter(model, "a")
    assert layer.slot_names[0] == "b"
    own = layer.slot_variables(0)[0]
    assert own.path.endswith(f"/{first}")
    assert tuple(own.shape)[axis] == widths[1]
    for name, outputs in _outputs_by_name(model, case).items():
        helpers.assert_outputs_close(outputs, expected[name], 1e-6)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    for name, outputs in _outputs_by_name(restored, case).items():
        helpers.assert_outputs_close(outputs, expected[name], 1e-6)
    keras_peft.set_active(model, last)
    for name in keras_peft.adapter_names(model)[:-1]:
        keras_peft.delete_adapter(model, name)
    if kind == "lora":
        keras_peft.merge_lora(model)
    helpers.assert_outputs_close(case.outputs(model), expected[last], 1e-5)


def test_bad_names_and_deleting_the_active_adapter_leave_the_model():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [("a", SWITCHABLE["lora"]()), ("b", SWITCHABLE["lora"]())]
    )
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match=r"no adapter named 'c'.*\['a', 'b'\]"):
        keras_peft.set_active(model, "c")
    with pytest.raises(ValueError, match="no adapter named 'c'"):
        keras_peft.delete_adapter(model, "c")
    with pytest.raises(ValueError, match="'a' is the active adapter"):
        keras_peft.delete_adapter(model, "a")
    with pytest.raises(ValueError, match="Cannot save adapter 'c'"):
        keras_peft.save_adapter(model, "unused", name="c")
    for bad in ("", "a/b", " a", 3):
        with pytest.raises(ValueError, match="adapter name"):
            keras_peft.apply(model, SWITCHABLE["lora"](), name=bad)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    assert keras_peft.active_adapter(model) == "a"
    plain = case.build()
    with pytest.raises(ValueError, match="has no adapter applied"):
        keras_peft.set_active(plain, "default")


@pytest.mark.parametrize(
    "second, match",
    [
        (
            lambda: keras_peft.LoRAConfig(rank=4, alpha=8, dropout=0.1),
            "dropout='0.1' instead of '0.0'",
        ),
        # Plans a LoRA layer a second LoRA config of the adapter cannot
        # share: nothing it planned (its kept biases) stays.
        (
            lambda: [
                keras_peft.BitFitConfig(),
                keras_peft.LoRAConfig(rank=4, alpha=8, dropout=0.1),
            ],
            "dropout='0.1' instead of '0.0'",
        ),
    ],
)
def test_an_adapter_that_cannot_join_leaves_the_model(second, match):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("a", SWITCHABLE["lora"]())])
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match=match):
        keras_peft.apply(model, second(), name="b")
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    assert keras_peft.adapter_names(model) == ("a",)


def test_prefix_mlps_share_a_model_and_eject_together(tmp_path):
    """Prefixes trained through their MLPs share one MLP layer (a slot
    each): saved by name with or without the MLP, each loads alone to its
    outputs; `eject_prefix` ejects every adapter's prefix; deleting an
    adapter keeps the others'."""
    case = helpers.MODEL_CASES["bert_classifier"]
    methods = {"a": "prefix_mlp", "b": "mam_mlp", "c": "lora"}
    model = _named_model(
        case, [(name, SWITCHABLE[m]()) for name, m in methods.items()]
    )
    expected = _outputs_by_name(model, case)
    for name in methods:
        for keep in (False, True):
            path = tmp_path / f"{name}_{keep}"
            keras_peft.save_adapter(
                model, path, name=name, keep_prefix_mlp=keep
            )
            alone = case.build()
            keras_peft.load_adapter(alone, str(path))
            # Computed prefixes are stored in float32, as the MLP's are.
            helpers.assert_outputs_close(
                case.outputs(alone), expected[name], 1e-6
            )
    # What the summary says save_adapter stores: every adapter's bundle.
    stored = 0
    for name in methods:
        with open(tmp_path / f"{name}_False" / "adapter_config.json") as f:
            entries = json.load(f)["variables"]
        stored += sum(int(np.prod(entry["shape"])) for entry in entries)
    assert keras_peft.trainable_summary(model).saved == stored
    keras_peft.set_active(model, "c")
    keras_peft.delete_adapter(model, "a")
    for name, outputs in _outputs_by_name(model, case).items():
        helpers.assert_outputs_close(outputs, expected[name], 1e-6)
    keras_peft.eject_prefix(model)
    assert all(
        not getattr(config, "reparam", False)
        for name in ("b", "c")
        for config in _configs_of(model, name)
    )
    for name, outputs in _outputs_by_name(model, case).items():
        helpers.assert_outputs_close(outputs, expected[name], 1e-6)
    assert not any(
        isinstance(layer, PrefixReparametrization)
        for layer in _adapter_layers(model)
    )


@pytest.mark.parametrize("first", ["lora", "prefix", "adapters"])
def test_a_text_initialized_prefix_starts_from_the_frozen_model(first):
    """Li & Liang's text initialization of a new named adapter's prefix
    records the frozen model's activations, not the active adapter's."""
    case = helpers.MODEL_CASES["bert_backbone"]

    def config():
        return keras_peft.PrefixTuningConfig(
            length=3,
            reparam=False,
            init="text",
            init_text="summarize table",
            tokenizer=helpers.bert_tokenizer(),
        )

    fresh = keras_peft.apply(case.build(), config())
    model = _named_model(case, [("a", SWITCHABLE[first]())])
    keras_peft.apply(model, config(), name="b")
    wrappers = [
        layer
        for model_ in (fresh, model)
        for layer in _adapter_layers(model_)
        if isinstance(layer, PrefixAttention)
    ]
    half = len(wrappers) // 2
    for alone, shared in zip(wrappers[:half], wrappers[half:]):
        slot = shared.slot_names.index("b")
        for want, got in zip(alone.prefix(), shared.slot_variables(slot)):
            # The same pass of the same frozen layers.
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _configs_of(model, name):
    from keras_peft.core import architectures
    from keras_peft.core import state as state_lib

    backbone = architectures.resolve_model(model).backbone
    return state_lib.get_state(backbone).adapters[name].configs


def test_a_prefix_that_cannot_share_a_layer_leaves_the_model():
    """A prefix of another length fails once planned (its layers patched
    the attention layers): the model computes as before."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("a", SWITCHABLE["prefix"]())])
    before, outputs = helpers.snapshot(model), case.outputs(model)
    with pytest.raises(
        ValueError, match="length='2' instead of '3'.*a prefix's length"
    ):
        keras_peft.apply(
            model,
            keras_peft.PrefixTuningConfig(length=2, reparam=False),
            name="b",
        )
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    helpers.assert_outputs_equal(case.outputs(model), outputs)
    # A prefix trained through an MLP and one trained directly do not
    # share a layer; once ejected, the prefix is a slot like any other.
    reparam = keras_peft.apply(
        case.build(), keras_peft.PrefixTuningConfig(length=3)
    )
    with pytest.raises(ValueError, match="reparam='False' instead of 'True'"):
        keras_peft.apply(reparam, SWITCHABLE["prefix"](), name="b")
    ejected = case.outputs(keras_peft.eject_prefix(reparam))
    keras_peft.apply(reparam, SWITCHABLE["prefix"](), name="b")
    helpers.assert_outputs_equal(case.outputs(reparam), ejected)
    # MLPs feeding other attention layers do not share one.
    t5 = helpers.MODEL_CASES["t5_backbone"]
    model = keras_peft.apply(
        t5.build(), keras_peft.PrefixTuningConfig(length=3, reparam_hidden=8)
    )
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="feeds other attention layers"):
        keras_peft.apply(
            model,
            keras_peft.PrefixTuningConfig(
                length=3, reparam_hidden=8, attention=("encoder",)
            ),
            name="b",
        )
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_a_layer_that_cannot_switch_is_refused(monkeypatch):
    """A custom adapter layer that does not read its weights through
    `slot_values` cannot share a model or serve `multi_task`."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("a", SWITCHABLE["lora"]())])
    monkeypatch.setattr(LoRADense, "switchable", False)
    with pytest.raises(ValueError, match="LoRADense layers cannot be switched"):
        keras_peft.apply(model, SWITCHABLE["adapters"](), name="b")
    with pytest.raises(ValueError, match="holds LoRADense layers"):
        keras_peft.multi_task(model, ["a"])
    assert keras_peft.adapter_names(model) == ("a",)


def test_prefixes_trained_through_their_mlp_load_beside_each_other(
    tmp_path,
):
    """The serving path for prefixes trained with reparam=True (MAM's
    default): each saved alone (the computed prefix) loads by name beside
    the others and switches to its own outputs."""
    case = helpers.MODEL_CASES["bert_classifier"]
    expected = {}
    for index, config in enumerate(
        [
            keras_peft.MAMConfig(prefix_length=3, bottleneck=4),
            keras_peft.PrefixTuningConfig(length=3, reparam_hidden=8),
        ]
    ):
        model = keras_peft.apply(case.build(), config)
        _randomize(model, model.trainable_weights, index)
        expected[f"t{index}"] = case.outputs(model)
        keras_peft.save_adapter(model, tmp_path / f"t{index}")
    served = case.build()
    for name in expected:
        keras_peft.load_adapter(served, str(tmp_path / name), name=name)
    for name, outputs in _outputs_by_name(served, case).items():
        # The prefix was computed by the MLP and stored in float32.
        helpers.assert_outputs_close(outputs, expected[name], 1e-5)


@pytest.mark.parametrize("first", ["bitfit", "lora_bias", "houlsby"])
def test_an_adapter_trained_in_place_hands_its_values_over(first):
    """Alone, an adapter trains base variables in place. A second adapter
    joining gives it its own copies of their values and the base model
    its original ones back: its outputs stay, and `disabled` gives the
    base model's outputs exactly. Deleting the other gives the values
    back to the base variables."""
    # Its pooler's bias sits inside a tanh.
    case = helpers.MODEL_CASES["bert_backbone"]
    fresh = case.build()
    base_outputs = case.outputs(fresh)
    base_values = {v.path: keras.ops.convert_to_numpy(v) for v in fresh.weights}
    model = _named_model(case, [("a", SWITCHABLE[first]())])
    kept = keras_peft.core.state.get_state(model).adapters["a"].kept_variables
    trained = {v.path: keras.ops.convert_to_numpy(v) for v in kept}
    assert kept and not any(
        np.array_equal(trained[path], base_values[path]) for path in trained
    )
    expected = case.outputs(model)
    with pytest.raises(ValueError, match="trains variables of the base"):
        with keras_peft.disabled(model):
            pass

    keras_peft.apply(model, SWITCHABLE["lora"](), name="b")
    for variable in kept:
        assert not variable.trainable, variable.path
        # Exact: the recorded values, assigned back.
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), base_values[variable.path]
        )
    copies = {
        layer.base_variable.path: layer.slot_variables(0)[0]
        for layer in _adapter_layers(model)
        if isinstance(layer, KeptVariable)
    }
    assert sorted(copies) == sorted(trained)
    for path, copy in copies.items():
        assert copy.trainable and _owner(model, copy) == "a"
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(copy), trained[path]
        )
    # The same values, read through the copies: float tolerance.
    helpers.assert_outputs_close(case.outputs(model), expected, 1e-6)
    with keras_peft.disabled(model):
        helpers.assert_outputs_equal(case.outputs(model), base_outputs)
    _randomize(model, _adapter_variables(model, "b"), 5)
    keras_peft.set_active(model, "b")
    b_outputs = case.outputs(model)
    assert not np.allclose(
        keras.tree.flatten(b_outputs)[0], keras.tree.flatten(expected)[0]
    )

    keras_peft.set_active(model, "a")
    keras_peft.delete_adapter(model, "b")
    assert not any(
        isinstance(layer, KeptVariable) for layer in _adapter_layers(model)
    )
    for variable in kept:
        assert variable.trainable, variable.path
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), trained[variable.path]
        )
    helpers.assert_outputs_close(case.outputs(model), expected, 1e-6)
    # Its values from before are known again: another adapter can join.
    keras_peft.apply(model, SWITCHABLE["lora"](), name="c")
    with keras_peft.disabled(model):
        helpers.assert_outputs_equal(case.outputs(model), base_outputs)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="whole-model saving is checked once, on TensorFlow",
)
def test_a_new_adapter_starts_from_the_values_from_before():
    """Beside an adapter that trained base variables in place, a new one's
    copies start from the values from before (those it would have in a
    fresh model), also after the first adapter took more configs while
    alone; `disabled` then gives the base model's outputs exactly."""
    case = helpers.MODEL_CASES["bert_backbone"]
    base = case.outputs(case.build())
    model = case.build()
    keras_peft.apply(model, keras_peft.BitFitConfig(targets=["query"]), "a")
    _randomize(model, model.trainable_weights, 1)
    # Overlapping the first: the query biases trained already.
    keras_peft.apply(model, keras_peft.BitFitConfig(), name="a")
    _randomize(model, model.trainable_weights, 2)
    keras_peft.apply(model, keras_peft.BitFitConfig(), name="b")
    keras_peft.set_active(model, "b")
    # Copies of the base values: float tolerance.
    helpers.assert_outputs_close(case.outputs(model), base, 1e-6)
    with keras_peft.disabled(model):
        helpers.assert_outputs_equal(case.outputs(model), base)


def test_deleting_an_adapter_beside_shared_copies_keeps_the_others():
    """Houlsby's and BitFit's copies of one layer norm, and LoRA's kept
    bias at a layer whose bias BitFit keeps: deleting the first adapter
    leaves the others computing as before."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case,
        [
            ("a", SWITCHABLE["houlsby"]()),
            ("b", SWITCHABLE["bitfit"]()),
            (
                "c",
                keras_peft.LoRAConfig(rank=2, targets="ffn", bias="lora_only"),
            ),
        ],
    )
    expected = _outputs_by_name(model, case)
    keras_peft.set_active(model, "c")
    keras_peft.delete_adapter(model, "a")
    assert keras_peft.adapter_names(model) == ("b", "c")
    for name, outputs in _outputs_by_name(model, case).items():
        helpers.assert_outputs_close(outputs, expected[name], 1e-6)


def test_a_restored_model_trained_in_place_takes_no_second_adapter(
    tmp_path,
):
    """A `.keras` file holds BitFit's trained biases, not those from
    before: a second adapter is refused (the model unchanged), and the way
    out the error names works."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("a", SWITCHABLE["bitfit"]())])
    expected = case.outputs(model)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    before = helpers.snapshot(restored)
    with pytest.raises(ValueError, match="no longer knows their original"):
        keras_peft.apply(restored, SWITCHABLE["lora"](), name="b")
    helpers.assert_snapshot_equal(before, helpers.snapshot(restored))
    assert keras_peft.adapter_names(restored) == ("a",)
    keras_peft.save_adapter(restored, tmp_path / "a", name="a")
    both = case.build()
    keras_peft.apply(both, SWITCHABLE["lora"](), name="b")
    keras_peft.load_adapter(both, str(tmp_path / "a"), name="a")
    keras_peft.set_active(both, "a")
    helpers.assert_outputs_close(case.outputs(both), expected, 1e-6)


def test_the_summary_counts_each_adapters_copies_by_method():
    """BitFit's copies count as BitFit's, LoRA's kept biases as the base
    model's, as they do with one adapter."""
    case = helpers.MODEL_CASES["bert_classifier"]
    bitfit = dict(
        keras_peft.trainable_summary(
            _named_model(case, [("a", SWITCHABLE["bitfit"]())])
        ).groups
    )
    lora_bias = dict(
        keras_peft.trainable_summary(
            _named_model(case, [("a", SWITCHABLE["lora_bias"]())])
        ).groups
    )
    both = _named_model(
        case,
        [("a", SWITCHABLE["bitfit"]()), ("b", SWITCHABLE["lora_bias"]())],
    )
    groups = dict(keras_peft.trainable_summary(both).groups)
    assert groups["bitfit"] == bitfit["bitfit"]
    assert groups["base"] == lora_bias["base"] > 0
    assert groups["lora"] == lora_bias["lora"]
    assert groups["head"] == 2 * bitfit["head"]


def test_a_task_head_other_than_dense_must_be_frozen_to_share():
    case = helpers.MODEL_CASES["bert_masked_lm"]
    model = _named_model(case, [("a", SWITCHABLE["lora"]())])
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="MaskedLMHead.*Freeze them"):
        keras_peft.apply(model, SWITCHABLE["lora"](), name="b")
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    model.get_layer("mlm_head").trainable = False
    keras_peft.apply(model, SWITCHABLE["lora"](), name="b")
    assert keras_peft.adapter_names(model) == ("a", "b")


def test_an_adapter_for_another_backbone_shape_is_refused(tmp_path):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("a", SWITCHABLE["lora"]())])
    keras_peft.save_adapter(model, tmp_path / "a")
    other = keras_peft.apply(
        helpers.MODEL_CASES["t5_backbone"].build(),
        SWITCHABLE["lora"](),
        name="x",
    )
    before = helpers.snapshot(other)
    with pytest.raises(ValueError, match="saved for a BertBackbone"):
        keras_peft.load_adapter(other, str(tmp_path / "a"), name="a")
    helpers.assert_snapshot_equal(before, helpers.snapshot(other))


def test_merging_is_refused_while_several_adapters_share_a_layer():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [("a", SWITCHABLE["lora"]()), ("b", SWITCHABLE["lora"]())]
    )
    before = case.outputs(model)
    with pytest.raises(ValueError, match="several named adapters"):
        keras_peft.merge_lora(model)
    helpers.assert_outputs_equal(case.outputs(model), before)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="whole-model saving is checked once, on TensorFlow",
)
@pytest.mark.parametrize(
    "model_name, methods",
    [
        ("bert_classifier", ("lora", "adapters")),
        ("t5_backbone", ("lora", "adapters")),
        ("t5_seq2seq", ("prompt", "prompt_and_lora")),
        ("bert_classifier", ("prefix", "mam")),
        ("bert_classifier", ("bitfit", "houlsby")),
    ],
)
def test_keras_file_round_trip_keeps_every_adapter(
    model_name, methods, tmp_path
):
    case = helpers.MODEL_CASES[model_name]
    model = _named_model(
        case, [(n, SWITCHABLE[m]()) for n, m in zip("ab", methods)]
    )
    expected = _outputs_by_name(model, case)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert keras_peft.adapter_names(restored) == ("a", "b")
    assert keras_peft.active_adapter(restored) == "b"
    for name, outputs in _outputs_by_name(restored, case).items():
        helpers.assert_outputs_equal(outputs, expected[name])


def test_a_single_default_adapter_saves_as_before(tmp_path):
    """One adapter named "default": the same bundle and `.keras` record
    as before adapters had names."""
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    keras_peft.apply(model, SWITCHABLE["lora"]())
    assert keras_peft.adapter_names(model) == ("default",)
    config = model.get_config()["keras_peft"]
    assert config["format_version"] == 1 and "configs" in config
    keras_peft.save_adapter(model, tmp_path / "x")
    assert os.path.isfile(tmp_path / "x" / "adapter_config.json")
    assert not any(
        layer.active_slot is not None for layer in _adapter_layers(model)
    )


LAYOUTS = {
    "lora_qv": lambda: keras_peft.LoRAConfig(rank=2),
    "lora_ffn": lambda: keras_peft.LoRAConfig(rank=2, targets="ffn"),
    "seq_ffn": lambda: keras_peft.AdapterConfig(bottleneck=4),
    "par_ffn": lambda: keras_peft.AdapterConfig(bottleneck=4, parallel=True),
    "mh_attn": lambda: keras_peft.AdapterConfig(
        bottleneck=4, location="attn", parallel=True, multi_head=True
    ),
    "prefix": lambda: keras_peft.PrefixTuningConfig(length=2, reparam=False),
}


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="bundle addresses are backend-neutral"
)
def test_a_bundle_loads_under_a_new_name_beside_any_adapter(tmp_path):
    """Every pair of layouts, the same one twice included: the bundle's
    layers may share the first adapter's layers (slots), sit inside its
    site hosts, or wrap layers its hosts hold."""
    case = helpers.MODEL_CASES["bert_classifier"]
    expected = {}
    for layout, config in LAYOUTS.items():
        model = case.build()
        keras_peft.apply(model, config())
        _randomize(model, model.trainable_weights, 1)
        keras_peft.save_adapter(model, tmp_path / layout)
        expected[layout] = case.outputs(model)
    for first in LAYOUTS:
        for second in LAYOUTS:
            model = case.build()
            keras_peft.apply(model, LAYOUTS[first](), name="a")
            keras_peft.load_adapter(model, str(tmp_path / second), name="b")
            keras_peft.set_active(model, "b")
            helpers.assert_outputs_close(
                case.outputs(model), expected[second], 1e-5
            )
            # Saved again by name: the addresses of the file it came from.
            keras_peft.save_adapter(model, tmp_path / "again", name="b")
            alone = case.build()
            keras_peft.load_adapter(alone, str(tmp_path / "again"))
            helpers.assert_outputs_close(
                case.outputs(alone), expected[second], 1e-5
            )


def test_applying_to_an_adapter_twice_at_one_layer_is_refused():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [("a", SWITCHABLE["lora"]()), ("b", SWITCHABLE["lora"]())]
    )
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="already wrapped by a LoRADense"):
        keras_peft.apply(model, SWITCHABLE["lora"](), name="a")
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_deleting_down_to_one_adapter_leaves_a_one_adapter_model(tmp_path):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [("a", SWITCHABLE["lora"]()), ("b", SWITCHABLE["lora"]())]
    )
    expected = _outputs_by_name(model, case)["b"]
    keras_peft.delete_adapter(model, "a")
    assert not any(
        layer.active_slot is not None for layer in _adapter_layers(model)
    )
    assert type(model.get_layer("logits")) is keras.layers.Dense
    helpers.assert_outputs_equal(case.outputs(model), expected)
    keras_peft.save_adapter(model, tmp_path / "b")
    alone = case.build()
    keras_peft.load_adapter(alone, str(tmp_path / "b"))
    helpers.assert_outputs_equal(case.outputs(alone), expected)
    keras_peft.merge_lora(model)
    helpers.assert_outputs_close(case.outputs(model), expected)
    if BACKEND == "tensorflow":
        model.save(tmp_path / "model.keras")
        restored = keras.saving.load_model(tmp_path / "model.keras")
        assert keras_peft.adapter_names(restored) == ("b",)
        helpers.assert_outputs_equal(
            case.outputs(restored), case.outputs(model)
        )


def test_merged_lora_neither_takes_a_second_adapter_nor_disables():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("a", SWITCHABLE["lora"]())])
    keras_peft.merge_lora(model)
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="merged into the base kernels"):
        keras_peft.apply(model, SWITCHABLE["lora"](), name="b")
    with pytest.raises(ValueError, match="merged into the base kernels"):
        with keras_peft.disabled(model):
            pass
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_a_classifier_around_a_named_backbone_keeps_each_adapters_head():
    """A backbone holding two adapters, then a classifier around it and a
    third adapter: the head the first two shared is copied for each, so
    adding the third changes neither's outputs."""
    case = helpers.MODEL_CASES["bert_classifier"]
    backbone = helpers.MODEL_CASES["bert_backbone"].build()
    for name in ("a", "b"):
        keras_peft.apply(backbone, SWITCHABLE["lora"](), name=name)
        _randomize(backbone, backbone.trainable_weights, 2)
    model = keras_hub.models.BertTextClassifier(
        backbone, num_classes=helpers.NUM_CLASSES, preprocessor=None
    )
    before = _outputs_by_name(model, case)
    keras_peft.apply(model, SWITCHABLE["lora"](), name="c")
    assert model.get_layer("logits").slot_names == ("a", "b", "c")
    after = _outputs_by_name(model, case)
    for name in ("a", "b"):
        helpers.assert_outputs_equal(after[name], before[name])
    # Switching through the backbone moves the task's heads too.
    keras_peft.set_active(model.backbone, "a")
    helpers.assert_outputs_equal(case.outputs(model), before["a"])
    keras_peft.set_active(model, "c")
    keras_peft.delete_adapter(model.backbone, "a")
    assert model.get_layer("logits").slot_names == ("b", "c")
    keras_peft.set_active(model.backbone, "b")
    helpers.assert_outputs_equal(case.outputs(model), before["b"])


def test_load_adapter_without_a_name_loads_into_the_active_adapter(
    tmp_path,
):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("sst2", SWITCHABLE["lora"]())])
    keras_peft.save_adapter(model, tmp_path / "x")
    expected = case.outputs(model)
    _randomize(model, model.trainable_weights, 7)
    keras_peft.load_adapter(model, str(tmp_path / "x"))
    assert keras_peft.adapter_names(model) == ("sst2",)
    helpers.assert_outputs_equal(case.outputs(model), expected)


def test_the_summary_counts_parameters_not_switches():
    case = helpers.MODEL_CASES["bert_classifier"]
    one = _named_model(case, [("a", SWITCHABLE["lora"]())])
    two = _named_model(
        case, [("a", SWITCHABLE["lora"]()), ("b", SWITCHABLE["lora"]())]
    )
    one_summary = keras_peft.trainable_summary(one)
    two_summary = keras_peft.trainable_summary(two)
    new = two_summary.trainable - one_summary.trainable
    assert two_summary.total - one_summary.total == new
    lora = dict(one_summary.groups)["lora"]
    head = dict(one_summary.groups)["head"]
    assert new == lora + head


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="bundle addresses are backend-neutral"
)
@pytest.mark.parametrize("model_name", ["bert_classifier", "t5_seq2seq"])
def test_prompt_bundles_load_under_new_names_in_either_order(
    model_name, tmp_path
):
    """The other adapter's LoRA sits inside the layers the prompt's
    wrappers hold: it is not the loaded adapter's."""
    case = helpers.MODEL_CASES[model_name]
    expected = {}
    for layout in ("prompt", "prompt_and_lora"):
        model = case.build()
        keras_peft.apply(model, SWITCHABLE[layout]())
        _randomize(model, model.trainable_weights, 3)
        keras_peft.save_adapter(model, tmp_path / layout)
        expected[layout] = case.outputs(model)
    for order in (("prompt", "prompt_and_lora"), ("prompt_and_lora", "prompt")):
        model = case.build()
        for name in order:
            keras_peft.load_adapter(model, str(tmp_path / name), name=name)
        for name, outputs in _outputs_by_name(model, case).items():
            helpers.assert_outputs_close(outputs, expected[name], 1e-5)


def test_a_prompt_adapter_takes_more_configs_and_reads_back_its_prompt():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [("a", SWITCHABLE["prompt"]()), ("b", SWITCHABLE["prompt"]())]
    )
    keras_peft.apply(model, SWITCHABLE["lora"](), name="a")
    assert [c.method for c in keras_peft.applied_configs(model)] == [
        "prompt_tuning",
        "lora",
    ]
    tokenizer = helpers.bert_tokenizer()
    read = {}
    for name in ("a", "b"):
        keras_peft.set_active(model, name)
        read[name] = keras_peft.nearest_tokens(model, tokenizer, k=2)
    alone = case.build()
    keras_peft.apply(alone, SWITCHABLE["prompt"]())
    prompt = [v for v in alone.trainable_weights if v.name == "prompt"][0]
    model_prompt = [
        v for v in _adapter_variables(model, "b") if v.name == "prompt"
    ][0]
    prompt.assign(np.asarray(model_prompt))
    assert read["b"] == keras_peft.nearest_tokens(alone, tokenizer, k=2)
    assert read["a"] != read["b"]
    # An adapter without a prompt has no tokens to read.
    keras_peft.apply(model, SWITCHABLE["lora"](), name="c")
    keras_peft.set_active(model, "c")
    with pytest.raises(ValueError, match="'c' has no prompt.*\\['a', 'b'\\]"):
        keras_peft.nearest_tokens(model, tokenizer, k=2)


def test_grouped_optimizer_refuses_one_bank_of_copies_in_two_groups():
    """BitFit's copies count as "bitfit", LoRA's kept biases as "base";
    where both keep a bias, its copies are rows of one variable, which
    one optimizer trains at one rate: a clear error, unless `groups=`
    puts it in one group. (Slot 0, "a"'s, is a variable of its own.)"""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case,
        [
            ("a", SWITCHABLE["bitfit"]()),
            ("b", SWITCHABLE["lora_bias"]()),
            ("c", SWITCHABLE["bitfit"]()),
        ],
    )
    with pytest.raises(ValueError, match="'bitfit' and 'base'.*one rate"):
        keras_peft.GroupedOptimizer(
            keras.optimizers.Adam(), {"bitfit": 1e-3}, model=model
        )
    paths = [v.path for v in model.trainable_variables]
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(), {"all": 1e-3}, groups={"all": paths}
    )
    optimizer.build(model.trainable_variables)


@pytest.mark.parametrize("ranks", [(4, 4), (4, 2)], ids=["equal", "other"])
def test_an_adapter_growing_after_others_keeps_the_adapters_order(
    ranks, tmp_path
):
    """Adapter "a" takes the value projections after "b" took them: each
    layer keeps its slots in the order of the model's adapters ("a"
    first), the order a `.keras` file rebuilds them in, so that every
    adapter loads with its own weights (of the same rank, or another)."""
    case = helpers.MODEL_CASES["bert_classifier"]

    def lora(rank, targets):
        return keras_peft.LoRAConfig(rank=rank, alpha=8, targets=targets)

    model = _named_model(
        case,
        [
            ("a", lora(ranks[0], ["query"])),
            ("b", lora(ranks[1], ["query", "value"])),
        ],
    )
    keras_peft.apply(model, lora(ranks[0], ["value"]), name="a")
    _randomize(model, _adapter_variables(model, "a"), 7)
    expected = _outputs_by_name(model, case)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    outputs = _outputs_by_name(restored, case)
    for name in ("a", "b"):
        helpers.assert_outputs_equal(outputs[name], expected[name])
    for layer in switching.adapter_layers(model):
        assert layer.slot_names == ("a", "b")


def test_the_summary_counts_each_of_many_prefix_mlps_once():
    """Ten prefixes trained through their MLPs (the MLP's banks then have
    rows to spare): the summary counts each adapter as a model holding it
    alone counts it, the shared MLP once per adapter."""
    case = helpers.MODEL_CASES["bert_classifier"]
    alone = case.build()
    keras_peft.apply(alone, SWITCHABLE["prefix_mlp"]())
    one = keras_peft.trainable_summary(alone)
    model = case.build()
    for index in range(10):
        keras_peft.apply(model, SWITCHABLE["prefix_mlp"](), name=f"t{index}")
    assert any(
        bank.shape[0] > 9
        for layer in switching.adapter_layers(model)
        for bank in layer.bank_variables
    )
    summary = keras_peft.trainable_summary(model)
    groups, alone_groups = dict(summary.groups), dict(one.groups)
    assert groups["prefix_tuning"] == 10 * alone_groups["prefix_tuning"]
    assert summary.prefix_mlp == 10 * one.prefix_mlp
    assert summary.computed_prefix == 10 * one.computed_prefix
