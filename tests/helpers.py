"""Shared test cases: tiny keras-hub models and the methods to check."""

import dataclasses
import fcntl
import os
import random
import subprocess
import tempfile

import keras
import keras_hub
import numpy as np

import keras_peft
from keras_peft.core import layer_tree

SHARED = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "..", "shared"
)

BERT = dict(
    vocabulary_size=60,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=24,
    dropout=0.0,
)
T5 = dict(
    vocabulary_size=40,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=24,
    dropout=0.0,
)
NUM_CLASSES = 3
BASE_SEED = 1234
_BASE_WEIGHTS = {}


def bert_inputs(batch=4, length=10, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), "int32")
    mask[0, length - 3 :] = 0
    return {
        "token_ids": rng.integers(
            1, BERT["vocabulary_size"], (batch, length)
        ).astype("int32"),
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": mask,
    }


def t5_inputs(batch=4, source=7, target=5, seed=0):
    rng = np.random.default_rng(seed)
    vocab = T5["vocabulary_size"]
    encoder_mask = np.ones((batch, source), "int32")
    encoder_mask[0, source - 2 :] = 0
    return {
        "encoder_token_ids": rng.integers(2, vocab, (batch, source)).astype(
            "int32"
        ),
        "encoder_padding_mask": encoder_mask,
        "decoder_token_ids": rng.integers(2, vocab, (batch, target)).astype(
            "int32"
        ),
        "decoder_padding_mask": np.ones((batch, target), "int32"),
    }


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A tiny model family member with inputs, labels and a loss."""

    name: str
    architecture: str
    make: object  # () -> model with random (not yet fixed) weights
    inputs: object  # () -> dict of arrays
    labels: object  # () -> array, or None for a backbone
    loss: object  # keras loss, or None for a backbone

    def build(self):
        """A model with this case's fixed base weights.

        The weights come from a fixed seed, so they are the same whichever
        test (or test process) builds the case first.
        """
        if self.name not in _BASE_WEIGHTS:
            # Keras initializers without a seed draw theirs from `random`.
            state = random.getstate()
            random.seed(BASE_SEED)
            model = self.make()
            random.setstate(state)
            _BASE_WEIGHTS[self.name] = model.get_weights()
            return model
        model = self.make()
        model.set_weights(_BASE_WEIGHTS[self.name])
        return model

    def outputs(self, model):
        outputs = model(self.inputs(), training=False)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    def backbone(self, model):
        return getattr(model, "backbone", model)

    @property
    def trainable_task(self):
        return self.loss is not None


def _bert_backbone():
    return keras_hub.models.BertBackbone(**BERT)


def _t5_backbone():
    return keras_hub.models.T5Backbone(**T5)


def _classifier():
    return keras_hub.models.BertTextClassifier(
        _bert_backbone(), num_classes=NUM_CLASSES, preprocessor=None
    )


def _masked_lm():
    return keras_hub.models.BertMaskedLM(_bert_backbone(), preprocessor=None)


def _masked_lm_inputs():
    inputs = bert_inputs()
    inputs["mask_positions"] = np.array([[1, 2]] * 4, "int32")
    return inputs


def _seq2seq():
    return keras_hub.models.T5Seq2SeqLM(_t5_backbone(), preprocessor=None)


sparse_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def randomize_trainable(model, seed=0, scale=0.5):
    """Moves every trainable weight to a random value, as training would.

    Where a test needs trained values but not training itself (fitting is
    checked once per method in `test_method_matrix`), this skips tracing a
    train function: seconds on a T5 task.
    """
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        value = scale * rng.normal(size=variable.shape)
        variable.assign(np.asarray(value, "float32"))


def compile(model, **kwargs):
    """`model.compile(**kwargs)`, then the optimizer's variables built now.

    Keras' TensorFlow trainer (without a distribution strategy) builds the
    optimizer inside the first traced train step; creating variables there
    makes TensorFlow trace the step a second time (half of a first `fit`'s
    time: 15 s on the T5 task with every method). Tests that check what a
    fit does, not how Keras builds, trace once. `test_apply` and the
    `GroupedOptimizer` tests keep Keras' own path.
    """
    model.compile(**kwargs)
    if model.optimizer is not None:
        model.optimizer.build(model.trainable_variables)


def fit_and_check(model, case, unused=()):
    """Fits `model` for 3 epochs on `case`'s batch and checks what a fit of
    an applied model must do: a finite loss that falls, every trainable
    variable moved (but those whose ids are in `unused`, which no gradient
    reaches), every frozen one bit-identical.

    Returns:
        The losses by epoch.
    """
    trainable_ids = {id(v) for v in model.trainable_weights}
    before = [np.array(v.numpy()) for v in model.weights]
    history = model.fit(
        case.inputs(), case.labels(), epochs=3, batch_size=4, verbose=0
    )
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    for variable, old in zip(model.weights, before):
        if id(variable) not in trainable_ids:
            # Exact: a frozen weight is never written.
            np.testing.assert_array_equal(variable.numpy(), old, variable.path)
        elif id(variable) not in unused:
            assert not np.array_equal(variable.numpy(), old), variable.path
    return losses


def gradients(fn, sources):
    """The gradients of `fn(*arrays)` (a scalar) with respect to `sources`,
    on whichever Keras backend runs.

    Args:
        fn: a function of the NumPy arrays in `sources`, passed in order as
            backend tensors, that may also read Keras variables.
        sources: Keras variables and NumPy arrays.

    Returns:
        `(value, grads)`: `fn`'s value and one NumPy array per source,
        frozen variables included. Where no gradient reaches a source,
        TensorFlow and torch give `None`, JAX zeros.
    """
    is_variable = [isinstance(s, keras.Variable) for s in sources]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [
            tf.constant(s) for s, v in zip(sources, is_variable) if not v
        ]
        with tf.GradientTape() as tape:
            # Frozen variables too: the tape watches only trainable ones.
            tape.watch(
                tensors + [s.value for s, v in zip(sources, is_variable) if v]
            )
            value = fn(*tensors)
        targets, arrays = [], iter(tensors)
        for source, variable in zip(sources, is_variable):
            targets.append(source.value if variable else next(arrays))
        grads = tape.gradient(value, targets)
    elif backend == "jax":
        import jax

        variables = [s for s, v in zip(sources, is_variable) if v]

        def pure(values, arrays):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return fn(*arrays)

        arrays = [s for s, v in zip(sources, is_variable) if not v]
        value, (by_variable, by_array) = jax.value_and_grad(
            pure, argnums=(0, 1)
        )([v.value for v in variables], arrays)
        by_variable, by_array = iter(by_variable), iter(by_array)
        grads = [next(by_variable if v else by_array) for v in is_variable]
    elif backend == "torch":
        import torch

        targets, tensors = [], []
        for source, variable in zip(sources, is_variable):
            if variable:
                targets.append(source.value)
            else:
                tensors.append(torch.tensor(source, requires_grad=True))
                targets.append(tensors[-1])
        # Frozen variables do not require gradients under torch: for the
        # call, they do.
        frozen = [t for t in targets if not t.requires_grad]
        try:
            for t in frozen:
                t.requires_grad_(True)
            value = fn(*tensors)
            grads = torch.autograd.grad(value, targets, allow_unused=True)
        finally:
            for t in frozen:
                t.requires_grad_(False)
    else:
        raise NotImplementedError(backend)
    return (
        keras.ops.convert_to_numpy(value),
        [None if g is None else keras.ops.convert_to_numpy(g) for g in grads],
    )


MODEL_CASES = {
    case.name: case
    for case in (
        ModelCase(
            "bert_classifier",
            "bert",
            _classifier,
            bert_inputs,
            lambda: np.array([0, 1, 2, 1]),
            sparse_ce,
        ),
        ModelCase(
            "bert_masked_lm",
            "bert",
            _masked_lm,
            _masked_lm_inputs,
            lambda: np.array([[3, 4]] * 4),
            sparse_ce,
        ),
        ModelCase(
            "bert_backbone", "bert", _bert_backbone, bert_inputs, None, None
        ),
        ModelCase(
            "t5_seq2seq",
            "t5",
            _seq2seq,
            t5_inputs,
            lambda: t5_inputs()["decoder_token_ids"],
            sparse_ce,
        ),
        ModelCase("t5_backbone", "t5", _t5_backbone, t5_inputs, None, None),
    )
}


def head_parameters(model, case):
    """Trainable parameters of a task outside its backbone."""
    backbone = case.backbone(model)
    inside = {id(v) for v in backbone.weights}
    return sum(
        int(np.prod(v.shape))
        for v in model.weights
        if id(v) not in inside and v.trainable
    )


def lora_count(case, model, rank):
    """LoRA (q, v) parameters: 2 projections x 2 d r per attention layer."""
    if case.architecture == "bert":
        d, layers = BERT["hidden_dim"], BERT["num_layers"]
        return 2 * layers * 2 * d * rank
    d, layers = T5["hidden_dim"], T5["num_layers"]
    # Encoder self-, decoder self- and decoder cross-attention.
    return 3 * layers * 2 * 2 * d * rank


def attention_layer_count(case):
    """BERT: one self-attention per layer; T5: encoder self-, decoder self-
    and decoder cross-attention per layer."""
    if case.architecture == "bert":
        return BERT["num_layers"]
    return 3 * T5["num_layers"]


def hidden_dim(case):
    return (BERT if case.architecture == "bert" else T5)["hidden_dim"]


def prefix_count(case, length):
    """Li & Liang: 2 l d per attention layer."""
    return 2 * length * hidden_dim(case) * attention_layer_count(case)


def reparametrized_prefix_count(case, length, hidden):
    """P' (l x h), hidden layer (h x h + h), output layer (h x w + w)."""
    width = prefix_count(case, 1)
    return length * hidden + hidden * hidden + hidden + hidden * width + width


def adapter_site_count(case, location):
    """Sites per location: BERT has self-attention and FFN per layer; T5
    encoder self-, decoder self- and cross-attention, and two FFNs."""
    if case.architecture == "bert":
        attention, ffn = BERT["num_layers"], BERT["num_layers"]
    else:
        attention, ffn = 3 * T5["num_layers"], 2 * T5["num_layers"]
    return {"ffn": ffn, "attn": attention, "both": attention + ffn}[location]


def adapter_count(case, location, bottleneck, learned_scale=False):
    """He et al.: 2 r d per adapter; plus its biases (r + d) and a learned
    scale, which the paper's formula leaves out."""
    d = hidden_dim(case)
    per_site = 2 * bottleneck * d + bottleneck + d + int(learned_scale)
    return adapter_site_count(case, location) * per_site


def multi_head_adapter_count(case, bottleneck):
    """Per attention: W_down (d_h, H, r) and W_up (H, r, d_h), He et al.'s
    2 r d (H d_h = d), plus the biases H r + H d_h."""
    config = BERT if case.architecture == "bert" else T5
    d, heads = config["hidden_dim"], config["num_heads"]
    head_dim = d // heads  # both models' default head width
    per_site = 2 * bottleneck * d + heads * bottleneck + heads * head_dim
    return adapter_site_count(case, "attn") * per_site


def lora_ffn_count(case, rank):
    """LoRA on each FFN projection: r (d_in + d_out) per projection; BERT
    has two per layer, gated T5 three per block (encoder and decoder)."""
    if case.architecture == "bert":
        d, f = BERT["hidden_dim"], BERT["intermediate_dim"]
        return BERT["num_layers"] * 2 * rank * (d + f)
    d, f = T5["hidden_dim"], T5["intermediate_dim"]
    return 2 * T5["num_layers"] * 3 * rank * (d + f)


def bert_bias_count():
    """Every bias of the BERT backbone: per layer q, k, v and attention
    output (d each), the FFN's (f + d), two layer norm offsets (d each);
    the embedding layer norm's offset and the pooler's bias."""
    d, f = BERT["hidden_dim"], BERT["intermediate_dim"]
    return BERT["num_layers"] * (7 * d + f) + 2 * d


def _all_methods():
    return [
        METHOD_CASES[name].config(None)
        for name in (
            "prompt_tuning",
            "prefix_tuning",
            "lora",
            "adapter",
            "parallel_adapter",
            "multi_head_parallel_adapter",
        )
    ]


def _all_methods_count(case, model):
    return (
        PROMPT_LENGTH * hidden_dim(case)
        + reparametrized_prefix_count(case, PREFIX_LENGTH, REPARAM_HIDDEN)
        + lora_count(case, model, 4)
        + adapter_count(case, "ffn", ADAPTER_BOTTLENECK)
        + adapter_count(case, "both", ADAPTER_BOTTLENECK, learned_scale=True)
        + multi_head_adapter_count(case, ADAPTER_BOTTLENECK)
    )


PROMPT_LENGTH = 4
PREFIX_LENGTH = 3
REPARAM_HIDDEN = 8
ADAPTER_BOTTLENECK = 4


@dataclasses.dataclass(frozen=True)
class MethodCase:
    name: str
    # The method's name, as trainable_summary groups it (a union's: each).
    method: str | tuple
    config: object  # (model case) -> config or list of configs
    count: object  # (model case, model) -> adapter parameter count
    starts_at_zero: bool = True  # outputs unchanged right after apply
    architectures: tuple = ("bert", "t5")  # the families it applies to

    @property
    def methods(self):
        return (self.method,) if isinstance(self.method, str) else self.method


METHOD_CASES = {
    case.name: case
    for case in (
        MethodCase(
            "lora",
            "lora",
            lambda case: keras_peft.LoRAConfig(rank=4, alpha=8),
            lambda case, model: lora_count(case, model, 4),
        ),
        MethodCase(
            "prompt_tuning",
            "prompt_tuning",
            lambda case: keras_peft.PromptTuningConfig(
                length=PROMPT_LENGTH, init="random"
            ),
            lambda case, model: PROMPT_LENGTH * hidden_dim(case),
            starts_at_zero=False,
        ),
        MethodCase(
            "prefix_tuning",
            "prefix_tuning",
            lambda case: keras_peft.PrefixTuningConfig(
                length=PREFIX_LENGTH, reparam_hidden=REPARAM_HIDDEN
            ),
            lambda case, model: reparametrized_prefix_count(
                case, PREFIX_LENGTH, REPARAM_HIDDEN
            ),
            starts_at_zero=False,
        ),
        MethodCase(
            "prefix_tuning_direct",
            "prefix_tuning",
            lambda case: keras_peft.PrefixTuningConfig(
                length=PREFIX_LENGTH, reparam=False
            ),
            lambda case, model: prefix_count(case, PREFIX_LENGTH),
            starts_at_zero=False,
        ),
        MethodCase(
            "adapter",
            "adapter",
            # gelu: a ReLU bottleneck this narrow can start dead on every
            # token, and the fit check wants every new variable to move.
            lambda case: keras_peft.AdapterConfig(
                bottleneck=ADAPTER_BOTTLENECK, activation="gelu"
            ),
            lambda case, model: adapter_count(case, "ffn", ADAPTER_BOTTLENECK),
        ),
        MethodCase(
            "parallel_adapter",
            "adapter",
            lambda case: keras_peft.AdapterConfig(
                bottleneck=ADAPTER_BOTTLENECK,
                location="both",
                parallel=True,
                scale="learned",
                activation="gelu",
            ),
            lambda case, model: adapter_count(
                case, "both", ADAPTER_BOTTLENECK, learned_scale=True
            ),
        ),
        MethodCase(
            "multi_head_parallel_adapter",
            "adapter",
            lambda case: keras_peft.AdapterConfig(
                bottleneck=ADAPTER_BOTTLENECK,
                location="attn",
                parallel=True,
                multi_head=True,
                activation="gelu",
            ),
            lambda case, model: multi_head_adapter_count(
                case, ADAPTER_BOTTLENECK
            ),
        ),
        MethodCase(
            "mam",
            ("prefix_tuning", "adapter"),
            lambda case: keras_peft.MAMConfig(
                prefix_length=PREFIX_LENGTH,
                bottleneck=ADAPTER_BOTTLENECK,
                reparam_hidden=REPARAM_HIDDEN,
                activation="gelu",
            ),
            lambda case, model: (
                reparametrized_prefix_count(case, PREFIX_LENGTH, REPARAM_HIDDEN)
                + adapter_count(case, "ffn", ADAPTER_BOTTLENECK)
            ),
            starts_at_zero=False,
        ),
        MethodCase(
            # He et al.'s union: prefix at the attention, LoRA at the FFN.
            "prefix_and_lora_ffn",
            ("prefix_tuning", "lora"),
            lambda case: [
                keras_peft.PrefixTuningConfig(
                    length=PREFIX_LENGTH, reparam=False
                ),
                keras_peft.LoRAConfig(rank=2, targets="ffn"),
            ],
            lambda case, model: (
                prefix_count(case, PREFIX_LENGTH) + lora_ffn_count(case, 2)
            ),
            starts_at_zero=False,
        ),
        MethodCase(
            # Two methods on the same layers: LoRA in the FFN's projections,
            # a parallel adapter around them.
            "lora_and_parallel_adapter_ffn",
            ("lora", "adapter"),
            lambda case: [
                keras_peft.LoRAConfig(rank=2, targets="ffn"),
                keras_peft.AdapterConfig(
                    bottleneck=ADAPTER_BOTTLENECK,
                    parallel=True,
                    scale=4.0,
                    activation="gelu",
                ),
            ],
            lambda case, model: (
                lora_ffn_count(case, 2)
                + adapter_count(case, "ffn", ADAPTER_BOTTLENECK)
            ),
        ),
        MethodCase(
            "bitfit",
            "bitfit",
            lambda case: keras_peft.BitFitConfig(),
            lambda case, model: bert_bias_count(),
            architectures=("bert",),
        ),
        MethodCase(
            # Every method at once (for T5: every one but BitFit), the
            # adapters of every kind sharing their sites with LoRA and the
            # prefix: one model that runs each method's code.
            "all_methods",
            ("prompt_tuning", "prefix_tuning", "lora", "adapter"),
            lambda case: _all_methods(),
            lambda case, model: _all_methods_count(case, model),
            starts_at_zero=False,
            architectures=("t5",),
        ),
        MethodCase(
            "all_methods_and_bitfit",
            ("prompt_tuning", "prefix_tuning", "lora", "adapter", "bitfit"),
            lambda case: _all_methods() + [keras_peft.BitFitConfig()],
            lambda case, model: (
                _all_methods_count(case, model) + bert_bias_count()
            ),
            starts_at_zero=False,
            architectures=("bert",),
        ),
    )
}


def model_method_pairs():
    """`(model case name, method case name)` for every pair that applies."""
    return [
        (model, method)
        for model in sorted(MODEL_CASES)
        for method in sorted(METHOD_CASES)
        if MODEL_CASES[model].architecture in METHOD_CASES[method].architectures
    ]


def snapshot(model):
    """Everything about a model that a failed call must leave as it was."""
    return {
        "layers": [id(layer) for layer, _ in layer_tree.iter_layers(model)],
        "variables": [id(v) for v in model.variables],
        "trainable": [v.trainable for v in model.weights],
        "values": [np.array(v.numpy()) for v in model.weights],
        "configs": keras_peft.applied_configs(model),
    }


def assert_snapshot_equal(before, after):
    assert before["layers"] == after["layers"]
    assert before["variables"] == after["variables"]
    assert before["trainable"] == after["trainable"]
    assert before["configs"] == after["configs"]
    for x, y in zip(before["values"], after["values"]):
        np.testing.assert_array_equal(x, y)


def numpy(x):
    """`x`, a tensor or a structure of them, as NumPy arrays: under torch,
    detached from autograd (NumPy cannot read a tensor that requires grad).
    """
    return keras.tree.map_structure(keras.ops.convert_to_numpy, x)


def assert_outputs_equal(x, y):
    """Bit-identical outputs. Only for the same ops on the same values (a
    round trip, an untouched model, an update that adds exactly 0): two
    different kernels round differently on different CPUs."""
    keras.tree.map_structure(np.testing.assert_array_equal, x, y)


def assert_outputs_close(x, y, atol=1e-5):
    """Outputs equal to float tolerance, for two computations that run
    different kernels (merged vs unmerged, cached vs full decoding)."""
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5),
        x,
        y,
    )


def minilm_path():
    """Path of the real pretrained MiniLM BERT in ../shared, or None."""
    tool = os.path.join(SHARED, "tools", "minilm")
    if not os.path.exists(tool):
        return None
    # The tool fills its cache unlocked; test processes running in parallel
    # take turns, so that none sees a half-written cache and skips.
    lock_path = os.path.join(tempfile.gettempdir(), "keras-peft-minilm.lock")
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            result = subprocess.run(
                [tool], capture_output=True, text=True, timeout=600
            )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = result.stdout.strip()
    return path if result.returncode == 0 and os.path.isdir(path) else None


# A WordPiece vocabulary of BERT["vocabulary_size"] entries: special and
# reserved tokens first, then words, as in real BERT vocabularies.
BERT_WORDS = (
    "the a good bad movie film great awful plot actor story fun dull "
    "happy sad love hate best worst funny boring music scene end "
    "summarize positive negative table text"
).split()
BERT_VOCABULARY = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + [f"[unused{i}]" for i in range(4)]
    + BERT_WORDS
    + [f"w{i}" for i in range(BERT["vocabulary_size"] - 9 - len(BERT_WORDS))]
)


def bert_tokenizer():
    return keras_hub.models.BertTokenizer(vocabulary=BERT_VOCABULARY)


T5_WORDS = "red green blue cat dog bird runs sleeps sings fast slow".split()


def t5_sentences(count, seed, words=4):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(T5_WORDS, words)) for _ in range(count)]


def t5_tokenizer():
    """A `T5Tokenizer` over a word-level SentencePiece model trained here."""
    import io

    import sentencepiece

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(t5_sentences(200, 0)),
        model_writer=proto,
        vocab_size=14,
        model_type="word",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    return keras_hub.models.T5Tokenizer(proto=proto.getvalue())
