"""Mixed-task batches: every example computed with its own adapter and
head, in serving and in training, on every backend."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from keras_peft.core import multi_task
from keras_peft.core import switching
from keras_peft.layers import routing
from tests import helpers
from tests.test_named_adapters import SWITCHABLE
from tests.test_named_adapters import _assert_gradients_only_in
from tests.test_named_adapters import _element_owners
from tests.test_named_adapters import _fit_moves_only
from tests.test_named_adapters import _mask
from tests.test_named_adapters import _named_model
from tests.test_named_adapters import _outputs_by_name

BACKEND = keras.backend.backend()
TASKS = {
    "bert_classifier": ("lora", "lora_ffn_and_adapter", "adapters"),
    "t5_backbone": ("lora", "adapters", "lora_ffn_and_adapter"),
}
# Every task with a prompt (of one length), one also with LoRA.
PROMPT_TASKS = ("prompt", "prompt_and_lora", "prompt")
# Prompts of two lengths (slot 0's the shorter) and a task without one:
# the shorter prompt's unused positions and the prompt-less task's are
# masked out.
MIXED_PROMPT_TASKS = ("prompt_and_lora", "lora", "prompt5")
# Prompts of one length beside a task without one.
SOME_PROMPT_TASKS = ("prompt", "lora", "prompt_and_lora")
# Prefixes (MAM's among them), and a task without one: its examples
# mask the prefix out.
PREFIX_TASKS = {
    "bert_classifier": ("prefix", "lora", "mam"),
    "t5_backbone": ("prefix", "prefix_and_lora", "lora"),
}
# Prefixes computed by their MLPs (one MLP layer, a slot each).
PREFIX_MLP_TASKS = ("prefix_mlp", "lora", "mam_mlp")
# Base variables each task trains, kept per task: BitFit's biases (the
# FFN's and the pooler's inside their activations), Houlsby's layer norms
# (scale and offset), LoRA's (wrapping layers with kept biases); T5's
# norm weights.
KEPT_TASKS = {
    "bert_classifier": ("bitfit", "houlsby", "lora_bias"),
    "t5_backbone": ("houlsby", "lora", "houlsby_wide"),
}
# Three tasks over a batch of 4: every task, one twice.
TASK_IDS = np.array([2, 0, 1, 2], "int32")


def _server(model_name, tasks=None):
    case = helpers.MODEL_CASES[model_name]
    tasks = tasks or TASKS[model_name]
    names = tuple(f"{i}_{task}" for i, task in enumerate(tasks))
    model = _named_model(
        case, [(n, SWITCHABLE[t]()) for n, t in zip(names, tasks)]
    )
    expected = _outputs_by_name(model, case)
    return case, model, keras_peft.multi_task(model, list(names)), expected


def _rows(outputs, index):
    return keras.tree.map_structure(lambda x: np.asarray(x)[index], outputs)


@pytest.mark.parametrize(
    "model_name, tasks",
    [
        ("bert_classifier", None),
        ("t5_backbone", None),
        ("bert_classifier", PROMPT_TASKS),
        ("t5_backbone", PROMPT_TASKS),
        ("bert_classifier", MIXED_PROMPT_TASKS),
        ("t5_backbone", MIXED_PROMPT_TASKS),
        ("bert_classifier", SOME_PROMPT_TASKS),
        ("bert_classifier", PREFIX_TASKS["bert_classifier"]),
        ("t5_backbone", PREFIX_TASKS["t5_backbone"]),
        ("bert_classifier", PREFIX_MLP_TASKS),
        ("bert_classifier", KEPT_TASKS["bert_classifier"]),
        ("t5_backbone", KEPT_TASKS["t5_backbone"]),
    ],
)
def test_each_row_equals_its_task_run_alone(model_name, tasks):
    case, model, server, expected = _server(model_name, tasks)
    names = server.task_names
    inputs = {**case.inputs(), "task_ids": TASK_IDS}
    eager = helpers.numpy(server(inputs))
    predicted = server.predict(inputs, verbose=0)
    for row, task in enumerate(TASK_IDS):
        want = _rows(expected[names[task]], row)
        # Per-example weights take other kernels than one shared weight.
        # (With prompts of several lengths, T5's encoder output spans the
        # longest: the switched model's does too, and equals the
        # single-task model's on its positions, test_named_adapters.)
        for got in (eager, predicted):
            helpers.assert_outputs_close(_rows(got, row), want, 1e-5)
    # Serving every task leaves the model's own switch as it was.
    assert keras_peft.active_adapter(model) == names[-1]


def test_one_adapter_serves_as_the_model_computes():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(case, [("default", SWITCHABLE["adapters"]())])
    server = keras_peft.multi_task(model, ["default"])
    outputs = server({**case.inputs(), "task_ids": np.zeros(4, "int32")})
    helpers.assert_outputs_close(helpers.numpy(outputs), case.outputs(model))


@pytest.mark.parametrize(
    "model_name, tasks, absent",
    [
        ("bert_classifier", None, 1),
        ("bert_classifier", PREFIX_TASKS["bert_classifier"], 0),
        ("bert_classifier", PREFIX_MLP_TASKS, 2),
        ("t5_seq2seq", PREFIX_TASKS["t5_backbone"], 0),
        ("bert_classifier", MIXED_PROMPT_TASKS, 0),
        ("t5_seq2seq", MIXED_PROMPT_TASKS, 2),
        ("bert_classifier", KEPT_TASKS["bert_classifier"], 0),
        ("bert_classifier", KEPT_TASKS["bert_classifier"], 2),
        ("t5_seq2seq", KEPT_TASKS["t5_backbone"], 1),
    ],
)
def test_mixed_batches_train_each_task_from_its_own_examples(
    model_name, tasks, absent
):
    case, model, server, _ = _server(model_name, tasks)
    names = server.task_names
    inputs, labels = case.inputs(), case.labels()
    trainable = server.trainable_weights
    owners = _element_owners(model)
    # A batch of the other two tasks.
    present = [task for task in range(3) if task != absent]
    without = np.array(present * 2, "int32")

    def moves(variable):
        return _mask(owners, variable, [names[task] for task in present])

    def loss(*_):
        outputs = server({**inputs, "task_ids": without}, training=False)
        return case.loss(labels, outputs)

    _, grads = helpers.gradients(loss, trainable)
    _assert_gradients_only_in(grads, trainable, [moves(v) for v in trainable])
    _fit_moves_only(
        server, {**inputs, "task_ids": without}, labels, case.loss, moves
    )


def test_task_ids_out_of_range_raise_where_known():
    case, model, server, expected = _server("bert_classifier")
    inputs = case.inputs()
    for ids in ([0, 3, 1, 0], [-1, 0, 0, 0]):
        bad = {**inputs, "task_ids": np.array(ids, "int32")}
        with pytest.raises(ValueError, match="out of range.*ids 0 to 2"):
            server(bad)
        with pytest.raises(ValueError, match="out of range"):
            server.predict(bad, verbose=0)
    with pytest.raises(ValueError, match="'task_ids' entry"):
        server(inputs)


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="a tf.data pipeline hides the values"
)
def test_task_ids_out_of_range_are_clipped_in_a_compiled_function():
    import tensorflow as tf

    case, model, server, expected = _server("bert_classifier")
    names = server.task_names
    ids = np.array([7, -3, 2, 0], "int32")
    data = tf.data.Dataset.from_tensors({**case.inputs(), "task_ids": ids})
    predicted = server.predict(data, verbose=0)
    for row, task in enumerate(np.clip(ids, 0, 2)):
        helpers.assert_outputs_close(
            predicted[row], expected[names[task]][row], 1e-5
        )


def test_bad_task_lists_are_refused():
    case, model, server, _ = _server("bert_classifier")
    name = server.task_names[0]
    with pytest.raises(ValueError, match=r"no adapters named \['x'\]"):
        keras_peft.multi_task(model, [name, "x"])
    with pytest.raises(ValueError, match="repeats"):
        keras_peft.multi_task(model, [name, name])
    with pytest.raises(ValueError, match="at least one"):
        keras_peft.multi_task(model, [])
    with pytest.raises(TypeError, match="list of adapter names"):
        keras_peft.multi_task(model, name)


@pytest.mark.parametrize(
    "tasks",
    [
        TASKS["t5_backbone"],
        PROMPT_TASKS,
        MIXED_PROMPT_TASKS,
        PREFIX_TASKS["t5_backbone"],
        PREFIX_MLP_TASKS,
    ],
)
def test_t5_cached_generate_decodes_each_example_with_its_adapter(tasks):
    """`generate` (keras-hub's cached decoder, compiled as keras-hub
    compiles it) picks, at every step of every row, the greedy token of
    that row's task: checked against the single-task model's full forward
    pass on the generated tokens (argmax up to 1e-4, so that a near-tie
    rounded differently on another CPU cannot fail it)."""
    from tests import t5_decoding

    case, model, server, _ = _server("t5_seq2seq", tasks)
    names = server.task_names
    inputs = t5_decoding.generate_inputs(batch=4)
    model.compile(sampler="greedy")
    generated = server.generate(
        {**inputs, "task_ids": TASK_IDS}, stop_token_ids=None
    )
    tokens = np.asarray(generated["decoder_token_ids"])
    assert tokens.shape == (4, t5_decoding.MAX_LENGTH)
    # Keras-hub's cached decoding routed per example, step by step, against
    # each task's full pass (greedy tokens of a tiny model barely change
    # with the adapter; logits do).
    with routing.per_example(names, TASK_IDS):
        cached = t5_decoding.cached_logits(model, inputs, tokens)
    for name in names:
        keras_peft.set_active(model, name)
        logits = t5_decoding.full_forward_logits(model, inputs, tokens)
        rows = np.flatnonzero(TASK_IDS == names.index(name))
        # Another kernel path: float tolerance, as in t5_decoding.
        np.testing.assert_allclose(
            cached[rows], logits[rows], atol=1e-4, rtol=1e-4
        )
        for row in rows:
            steps = logits[row, :-1]
            chosen = np.take_along_axis(steps, tokens[row, 1:, None], axis=-1)[
                :, 0
            ]
            np.testing.assert_array_less(steps.max(-1) - chosen, 1e-4)
    # The tasks decode differently: routing reached the decoder.
    assert len({tuple(row) for row in tokens}) > 1
    with pytest.raises(ValueError, match="out of range"):
        server.generate(
            {**inputs, "task_ids": np.array([0, 1, 2, 3])},
            stop_token_ids=None,
        )


def test_t5_beam_search_decodes_each_example_with_its_adapter():
    """Beam search decodes `num_beams` rows per example: each routed to
    the example's adapter. Every row's sequence is that task's own beam
    search result, or (a near tie on another CPU) one its task scores as
    high to 1e-4."""
    from tests import t5_decoding

    case, model, server, _ = _server("t5_seq2seq", PREFIX_TASKS["t5_backbone"])
    names = server.task_names
    inputs = t5_decoding.generate_inputs(batch=4)
    model.compile(sampler=keras_hub.samplers.BeamSampler(num_beams=2))
    routed = np.asarray(
        server.generate({**inputs, "task_ids": TASK_IDS}, stop_token_ids=None)[
            "decoder_token_ids"
        ]
    )
    for name in names:
        keras_peft.set_active(model, name)
        alone = np.asarray(
            model.generate(inputs, stop_token_ids=None)["decoder_token_ids"]
        )
        for row in np.flatnonzero(TASK_IDS == names.index(name)):
            if np.array_equal(routed[row], alone[row]):
                continue
            scores = [
                _sequence_log_prob(model, inputs, tokens, row)
                for tokens in (routed, alone)
            ]
            np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)
    # The tasks decode differently: routing reached the beams.
    assert len({tuple(row) for row in routed}) > 1


@pytest.mark.parametrize("change", ["apply", "delete_adapter"])
def test_a_trained_server_asks_for_compile_again(change):
    """A server compiled and trained on its own has an optimizer built for
    the variables it trained: when another adapter joins the model it
    holds, or one it does not serve leaves (every bank made anew), `fit`
    asks for `compile()` up front, and trains once compiled again."""
    case, model, _, _ = _server("bert_classifier")
    names = keras_peft.adapter_names(model)
    server = keras_peft.multi_task(model, list(names[:2]))
    inputs = {**case.inputs(), "task_ids": np.array([1, 0, 1, 0], "int32")}
    helpers.compile(server, optimizer="adam", loss=case.loss)
    server.fit(inputs, case.labels(), verbose=0)
    with pytest.warns(UserWarning, match=f"keras_peft.{change}") as record:
        if change == "apply":
            keras_peft.apply(model, SWITCHABLE["lora"](), name="extra")
        else:
            keras_peft.set_active(model, names[0])
            keras_peft.delete_adapter(model, names[2])
    (warning,) = [w for w in record if "MultiTaskModel" in str(w.message)]
    assert warning.filename == __file__  # the user's line, not ours
    assert not server.compiled
    with pytest.raises(ValueError, match="compile"):
        server.fit(inputs, case.labels(), verbose=0)
    helpers.compile(server, optimizer="adam", loss=case.loss)
    server.fit(inputs, case.labels(), verbose=0)


def test_a_server_generates_with_what_the_model_holds_now():
    """The routed generation a server traces does not outlive a change of
    the model it holds: another adapter joining remakes the banks (new
    variables) its trace read, and `disabled` switches every adapter off.
    Each is checked against a server made afresh (the same ops on the same
    values: exact)."""
    import warnings

    from tests import t5_decoding

    case, model, server, _ = _server("t5_seq2seq", ("lora", "lora", "lora"))
    names = server.task_names
    inputs = {**t5_decoding.generate_inputs(batch=4), "task_ids": TASK_IDS}
    model.compile(sampler="greedy")

    def generated(served):
        outputs = served.generate(inputs, stop_token_ids=None)
        return np.asarray(outputs["decoder_token_ids"])

    before = generated(server)
    with warnings.catch_warnings():
        # Compiled before: `apply` warns that `compile` must run again.
        warnings.simplefilter("ignore")
        keras_peft.apply(model, SWITCHABLE["lora"](), name="extra")
    # Weights far from the trained-looking ones: other greedy tokens.
    for name in names:
        _randomize_strongly(model, name)
    now = generated(keras_peft.multi_task(model, list(names)))
    assert not np.array_equal(now, before)
    np.testing.assert_array_equal(generated(server), now)
    with keras_peft.disabled(model):
        base = generated(keras_peft.multi_task(model, list(names)))
        assert not np.array_equal(base, now)
        np.testing.assert_array_equal(generated(server), base)
    np.testing.assert_array_equal(generated(server), now)


def _randomize_strongly(model, name):
    from keras_peft.core import switching

    rng = np.random.default_rng(len(name))
    for _, variable in switching.named_variables(model, name):
        value = 2.0 * rng.normal(size=tuple(variable.shape))
        variable.assign(value.astype(variable.dtype))


def _sequence_log_prob(model, inputs, tokens, row):
    """The log-probability the active adapter gives row `row` of `tokens`
    (after its first, given token)."""
    from tests import t5_decoding

    logits = t5_decoding.full_forward_logits(model, inputs, tokens)[row]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    steps = log_probs[:-1]
    return np.take_along_axis(steps, tokens[row, 1:, None], -1).sum()


def test_bad_task_ids_in_a_direct_call_are_refused():
    case, model, server, _ = _server("bert_classifier")
    inputs = case.inputs()
    with pytest.raises(ValueError, match="must be integers"):
        server({**inputs, "task_ids": np.array([0.9, 1.9, 0.0, 1.0])})
    with pytest.raises(ValueError, match="3 ids for a batch of 4"):
        server({**inputs, "task_ids": np.array([0, 1, 2], "int32")})


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch runs eagerly: nothing is compiled"
)
def test_a_server_follows_the_model_it_holds():
    """`disabled` and `delete_adapter` on the model reach a server's
    compiled functions: no stale outputs, no deleted task served."""
    case, model, server, _ = _server("bert_classifier")
    inputs = {**case.inputs(), "task_ids": TASK_IDS}
    served = server.predict(inputs, verbose=0)
    with keras_peft.disabled(model):
        base = server.predict(inputs, verbose=0)
    assert not np.allclose(base, served, atol=1e-4)
    helpers.assert_outputs_equal(server.predict(inputs, verbose=0), served)
    keras_peft.set_active(model, server.task_names[1])
    keras_peft.delete_adapter(model, server.task_names[0])
    with pytest.raises(ValueError, match="no longer in the model"):
        server.predict(inputs, verbose=0)


def test_layers_holding_the_same_adapters_route_each_example_once(
    monkeypatch,
):
    case, model, server, _ = _server("bert_classifier")
    made = []
    new_plan = routing.Route._new_plan

    def counted(route, table, count):
        made.append((table, count))
        return new_plan(route, table, count)

    monkeypatch.setattr(routing.Route, "_new_plan", counted)
    server({**case.inputs(), "task_ids": TASK_IDS})
    layers = [
        layer for layer in switching.adapter_layers(model) if layer.switchable
    ]
    tables = multi_task.slot_tables(model, server.task_names)
    # One plan per distinct slot table, made as the route opened: no
    # layer made one of its own.
    assert sorted(made) == sorted(tables)
    assert len(tables) < len(layers)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="counts graph nodes")
@pytest.mark.parametrize("method", ["lora", "bitfit", "adapters", "houlsby"])
def test_routing_adds_few_graph_nodes_per_adapter_variable(method):
    # Every node of a served graph costs memory where it is loaded and
    # run (about 20 KiB on TensorFlow 2.21, benchmarks/multi_task.py):
    # routing per example must not cost a server a node count growing
    # with every layer's own routing. Shared plans and values read only
    # where an example can take them make about 20 nodes per adapter
    # variable (each layer's own routing took 44 to 57); 30 leaves room
    # for other TensorFlow and Keras releases.
    import tensorflow as tf

    case = helpers.MODEL_CASES["bert_classifier"]
    x = {k: np.asarray(v) for k, v in case.inputs().items()}

    def nodes(function, inputs):
        specs = keras.tree.map_structure(
            lambda v: tf.TensorSpec(v.shape, v.dtype), inputs
        )
        graph = tf.function(function).get_concrete_function(specs).graph
        return len(graph.as_graph_def().node)

    single = _named_model(case, [("a", SWITCHABLE[method]())])
    model = _named_model(
        case, [(name, SWITCHABLE[method]()) for name in ("a", "b")]
    )
    server = keras_peft.multi_task(model, ["a", "b"])
    routed = nodes(server, {**x, "task_ids": np.zeros(4, "int32")})
    variables = sum(
        len(layer.slot_variables(0))
        for layer in switching.adapter_layers(model)
        if layer.switchable
    )
    assert routed - nodes(single, x) <= 30 * variables


def test_a_server_of_some_adapters_computes_each_as_it_computes_alone():
    # Slot 0's prompt (3 long) and a task without one, not the bank's
    # prompt (5 long): the prompt still takes the model's widest layout,
    # the one its mask is grown by.
    case, model, _, expected = _server("bert_classifier", MIXED_PROMPT_TASKS)
    names = keras_peft.adapter_names(model)
    server = keras_peft.multi_task(model, list(names[:2]))
    ids = np.array([1, 0, 1, 0], "int32")
    inputs, labels = {**case.inputs(), "task_ids": ids}, case.labels()
    outputs = helpers.numpy(server(inputs))
    for row, task in enumerate(ids):
        want = _rows(expected[names[task]], row)
        helpers.assert_outputs_close(_rows(outputs, row), want, 1e-5)
    # The adapter not served takes zero gradients, as an absent task does
    # (not none: an optimizer would warn of variables without one).
    trainable = server.trainable_weights
    owners = _element_owners(model)

    def loss(*_):
        return case.loss(labels, server(inputs, training=False))

    _, grads = helpers.gradients(loss, trainable)
    assert all(grad is not None for grad in grads)
    _assert_gradients_only_in(
        grads, trainable, [_mask(owners, v, names[:2]) for v in trainable]
    )
