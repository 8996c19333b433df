"""Table-to-text on T5: what `prefix_tuning.py` and `lora_t5.py` share.

The task is the prefix-tuning paper's E2E (Li & Liang 2021, Novikova et al.
2017): a restaurant's meaning representation (MR) such as
`name[The Eagle], eatType[coffee shop], food[French], area[riverside]`
becomes an English sentence. This module holds the data (a synthetic
E2E-style set it generates, or the E2E CSV files), the base models (a small
`T5Seq2SeqLM` with a SentencePiece vocabulary trained on the data, pretrained
here as a denoising autoencoder, or a keras-hub preset), argument parsing,
training, generation and scoring with keras-hub's BLEU and ROUGE-L, and the
save → reload → compare check. Each script adds only its method.
"""

import argparse
import collections
import csv
import dataclasses
import io
import os
import random
import re
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_peft  # noqa: E402

INSTALL_HINT = 'pip install -e ".[examples]"'
# The word that hides a word from the denoising pretraining's input.
MASK = "<mask>"

# Slot values of the E2E data set (a subset of its restaurant names).
NAMES = [
    "The Eagle",
    "The Mill",
    "Aromi",
    "Zizzi",
    "Cotto",
    "The Punter",
    "Green Man",
    "Loch Fyne",
    "Wildwood",
    "Fitzbillies",
    "The Vaults",
    "Alimentum",
    "Strada",
    "Giraffe",
    "The Phoenix",
    "Clowns",
]
NEAR = [
    "Burger King",
    "Café Rouge",
    "The Bakers",
    "Avalon",
    "Ranch",
    "Clare Hall",
    "The Sorrento",
    "All Bar One",
]
EAT_TYPES = ["pub", "coffee shop", "restaurant"]
FOODS = ["French", "Italian", "Chinese", "Japanese", "Indian", "English"]
PRICES = ["cheap", "moderate", "high", "less than £20", "more than £30"]
RATINGS = ["low", "average", "high", "1 out of 5", "5 out of 5"]
AREAS = ["riverside", "city centre"]
# E2E's slot order, each with the chance that a synthetic MR has it.
SLOTS = {
    "name": (NAMES, 1.0),
    "eatType": (EAT_TYPES, 1.0),
    "food": (FOODS, 0.7),
    "priceRange": (PRICES, 0.6),
    "customer rating": (RATINGS, 0.5),
    "area": (AREAS, 0.7),
    "familyFriendly": (["yes", "no"], 0.5),
    "near": (NEAR, 0.4),
}
# Ways to say each slot; a reference picks one of each.
CLAUSES = {
    "food": [" serving {} food", " that serves {} food"],
    "area": [" in the {}", " located in the {} area"],
    "near": [" near {}", " close to {}"],
}
SENTENCES = {
    "priceRange": ["Its prices are {}.", "Prices there are {}."],
    "customer rating": ["Its customer rating is {}.", "Customers rate it {}."],
    "familyFriendly": {
        "yes": ["It is family friendly.", "It is kid friendly."],
        "no": ["It is not family friendly.", "It is not kid friendly."],
    },
}
# Encoder (MR) and decoder (sentence) lengths in tokens: 99% of E2E's
# MRs and references fit with the offline vocabulary; the rest is cut.
SEQUENCE_LENGTHS = (40, 48)
VOCABULARY_SIZE = 1000
# Logits of two models that should compute the same thing (reloaded,
# merged) may differ by float32 rounding: this much of the largest logit.
TOLERANCE = 1e-4
# Sizes of the small offline T5: 2 encoder and 2 decoder layers.
SMALL_T5 = dict(
    num_layers=2,
    num_heads=4,
    hidden_dim=64,
    intermediate_dim=128,
    dropout=0.0,
)
TINY_T5 = dict(
    num_layers=1,
    num_heads=2,
    hidden_dim=32,
    intermediate_dim=64,
    dropout=0.0,
)


@dataclasses.dataclass
class TableToText:
    """Training pairs, and validation MRs with all their references.

    Args:
        train_mrs: list of str. One MR per training pair.
        train_refs: list of str. The reference sentence of each pair.
        val_mrs: list of str. Distinct validation MRs.
        val_refs: list of list of str. Every reference of each validation MR.
    """

    train_mrs: list
    train_refs: list
    val_mrs: list
    val_refs: list

    def train_data(self):
        """The training pairs as `T5Seq2SeqLM.fit` takes them."""
        return {
            "encoder_text": [linearize(mr) for mr in self.train_mrs],
            "decoder_text": self.train_refs,
        }

    def val_inputs(self):
        """The validation MRs as the model reads them."""
        return [linearize(mr) for mr in self.val_mrs]

    def val_data(self):
        """Every (MR, reference) validation pair, as `train_data`."""
        mrs, refs = [], []
        for mr, references in zip(self.val_inputs(), self.val_refs):
            mrs += [mr] * len(references)
            refs += references
        return {"encoder_text": mrs, "decoder_text": refs}

    def texts(self):
        """The training text, MRs and sentences unpaired."""
        return self.train_data()["encoder_text"] + self.train_refs


def require_packages():
    """Exits with an install hint when an examples dependency is missing."""
    missing = []
    for module, package in [
        ("sentencepiece", "sentencepiece"),
        ("rouge_score", "rouge-score"),
    ]:
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise SystemExit(
            f"This example needs {', '.join(missing)}: {INSTALL_HINT}"
        )


def synthetic_mr(rng):
    """A random E2E-style MR, as a dict from slot to value."""
    return {
        slot: rng.choice(values)
        for slot, (values, chance) in SLOTS.items()
        if rng.random() < chance
    }


def linearize(mr):
    """`"name[Aromi], eatType[pub]"` → `"name : Aromi | eatType : pub"`.

    Li & Liang's input format. In E2E's own, a value follows `[` with no
    space, so SentencePiece gives it other pieces than the same word in a
    sentence (`"Aromi"`, not `"▁Aromi"`), and the model would have to learn
    each value's mapping instead of copying it.
    """
    return " | ".join(
        f"{slot.strip()} : {value.strip()}"
        for slot, value in re.findall(r"([^,\[]+)\[([^\]]*)\]", mr)
    )


def format_mr(slots):
    """`{"name": "Aromi", ...}` → `"name[Aromi], ..."` in E2E's slot order."""
    return ", ".join(
        f"{slot}[{slots[slot]}]" for slot in SLOTS if slot in slots
    )


def synthetic_ref(slots, rng):
    """One templated English sentence that says every slot of `slots`."""
    clauses = "".join(
        rng.choice(CLAUSES[slot]).format(slots[slot])
        for slot in ("food", "area", "near")
        if slot in slots
    )
    if rng.random() < 0.5:
        first = f"{slots['name']} is a {slots['eatType']}{clauses}."
    else:
        first = (
            f"There is a {slots['eatType']} called {slots['name']}{clauses}."
        )
    sentences = [first]
    for slot in ("priceRange", "customer rating"):
        if slot in slots:
            sentences.append(rng.choice(SENTENCES[slot]).format(slots[slot]))
    if "familyFriendly" in slots:
        choices = SENTENCES["familyFriendly"][slots["familyFriendly"]]
        sentences.append(rng.choice(choices))
    return " ".join(sentences)


def synthetic_examples(count, seed, refs_per_mr=3):
    """`count` distinct synthetic MRs, each with its references.

    Args:
        count: int. Number of MRs.
        seed: int. Seed of the generator.
        refs_per_mr: int. References written for each MR, each with its own
            phrasing (equal ones are kept once). Defaults to `3`.

    Returns:
        A tuple `(mrs, refs)`: a list of str and a list of lists of str.
    """
    rng = random.Random(seed)
    grouped = {}
    while len(grouped) < count:
        slots = synthetic_mr(rng)
        refs = {synthetic_ref(slots, rng) for _ in range(refs_per_mr)}
        grouped.setdefault(format_mr(slots), sorted(refs))
    return list(grouped), list(grouped.values())


def synthetic_task(train_size, val_size, seed=0):
    """A synthetic task: no MR of the validation set is in the training set.

    Args:
        train_size: int. Number of training pairs.
        val_size: int. Number of validation MRs.
        seed: int. Seed of the generator. Defaults to `0`.
    """
    mrs, refs = synthetic_examples(train_size + val_size, seed)
    train_mrs, train_refs = [], []
    # One training pair per MR, a random one of its references.
    rng = random.Random(seed)
    for mr, references in zip(mrs[val_size:], refs[val_size:]):
        train_mrs.append(mr)
        train_refs.append(rng.choice(references))
    return TableToText(train_mrs, train_refs, mrs[:val_size], refs[:val_size])


def read_e2e(path):
    """Reads an E2E CSV file (columns `mr,ref`), grouping the references.

    Args:
        path: str. A file such as E2E's `trainset.csv` or `devset.csv`.

    Returns:
        A tuple `(mrs, refs)`: distinct MRs in file order, and a list of the
        references of each.
    """
    grouped = collections.defaultdict(list)
    # E2E's files are UTF-8 with a byte order mark in some releases.
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if not {"mr", "ref"} <= set(reader.fieldnames or ()):
            raise SystemExit(
                f"{path}: expected the columns `mr,ref`, found "
                f"{reader.fieldnames}"
            )
        for row in reader:
            grouped[row["mr"].strip()].append(row["ref"].strip())
    return list(grouped), list(grouped.values())


def e2e_task(path, val_path, train_size, val_size, seed=0):
    """E2E data: training pairs from `path`, validation MRs from `val_path`.

    Without `val_path`, validation MRs are split off `path` (all the
    references of an MR on one side). Both samples are drawn with `seed`.

    Args:
        path: str. The training CSV.
        val_path: str or `None`. The validation CSV, e.g. `devset.csv`.
        train_size: int. Number of training pairs (at most all of them).
        val_size: int. Number of validation MRs (at most all of them).
        seed: int. Seed of the samples. Defaults to `0`.
    """
    rng = random.Random(seed)
    mrs, refs = read_e2e(path)
    order = list(range(len(mrs)))
    rng.shuffle(order)
    if val_path:
        val_mrs, val_refs = read_e2e(val_path)
        val_order = list(range(len(val_mrs)))
        rng.shuffle(val_order)
        val_order = val_order[:val_size]
    else:
        val_mrs, val_refs = mrs, refs
        val_order, order = order[:val_size], order[val_size:]
    pairs = [(mrs[i], ref) for i in order for ref in refs[i]]
    rng.shuffle(pairs)
    pairs = pairs[:train_size]
    return TableToText(
        [mr for mr, _ in pairs],
        [ref for _, ref in pairs],
        [val_mrs[i] for i in val_order],
        [val_refs[i] for i in val_order],
    )


def train_tokenizer(texts, vocabulary_size):
    """A `T5Tokenizer` over a SentencePiece model trained on `texts`.

    Args:
        texts: list of str. The training text (MRs and references).
        vocabulary_size: int. The largest vocabulary; a smaller corpus gets
            a smaller one.
    """
    import sentencepiece

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=proto,
        vocab_size=vocabulary_size,
        hard_vocab_limit=False,
        # Keep every character, "£" and "é" included: none is rare here.
        character_coverage=1.0,
        # T5's ids: padding (also the decoder's start token), end, unknown.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        user_defined_symbols=[MASK],
        # On a corpus this small, unigram pieces split even common words:
        # sequences half again as long as BPE's.
        model_type="bpe",
        minloglevel=2,
    )
    return keras_hub.models.T5Tokenizer(proto=proto.getvalue())


def small_seq2seq_lm(tokenizer, sizes, sequence_lengths, base_weights=None):
    """A small random `T5Seq2SeqLM` with its preprocessor.

    Args:
        tokenizer: a `keras_hub.models.T5Tokenizer`.
        sizes: dict. `T5Backbone` arguments (`SMALL_T5` or `TINY_T5`).
        sequence_lengths: tuple of int. Encoder and decoder lengths.
        base_weights: str or `None`. A backbone weights file to load: the
            same base model again, for the reload check.
    """
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), **sizes
    )
    if base_weights:
        backbone.load_weights(base_weights)
    else:
        # keras-hub's T5Backbone draws its embeddings from
        # `TruncatedNormal(1.0)`, i.e. mean 1 and stddev 0.05: every token
        # then looks the same and a random model learns nothing. A pretrained
        # checkpoint overwrites them; here they get unit variance.
        embedding = backbone.token_embedding.embeddings
        initializer = keras.initializers.TruncatedNormal(stddev=1.0)
        embedding.assign(initializer(embedding.shape))
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(
        tokenizer,
        encoder_sequence_length=sequence_lengths[0],
        decoder_sequence_length=sequence_lengths[1],
    )
    return keras_hub.models.T5Seq2SeqLM(backbone, preprocessor=preprocessor)


def denoising_data(texts, seed, rate=0.15):
    """Pairs `(noisy text, text)`: words replaced by `MASK` at `rate`.

    Args:
        texts: list of str.
        seed: int. Seed of the noise.
        rate: float. Chance to mask each word. Defaults to `0.15`.
    """
    rng = random.Random(seed)
    noisy = [
        " ".join(MASK if rng.random() < rate else w for w in text.split())
        for text in texts
    ]
    return {"encoder_text": noisy, "decoder_text": list(texts)}


def batches(data, batch_size, seed):
    """`data` (a dict of equal-length lists) as batches reshuffled every
    epoch.

    keras-hub's `fit` turns lists into batches in their given order, which
    Keras then cannot shuffle: the denoising texts (MRs, then sentences)
    would come in two blocks.
    """
    import tensorflow as tf

    size = len(next(iter(data.values())))
    dataset = tf.data.Dataset.from_tensor_slices(data)
    return dataset.shuffle(size, seed=seed).batch(batch_size)


def compile_and_build(model, optimizer, **kwargs):
    """`model.compile`, then the optimizer's variables made at once.

    Keras' TensorFlow trainer would make them inside the first traced train
    step, and TensorFlow then traces the step twice: half of a first
    `fit`'s time with this small T5.
    """
    model.compile(optimizer=optimizer, **kwargs)
    optimizer.build(model.trainable_variables)


def pretrain(model, texts, epochs, batch_size, seed):
    """Trains every weight of `model` to restore `texts` from noisy copies.

    A stand-in for a pretrained checkpoint: a denoising autoencoder on
    unpaired text, as T5 and BART are pretrained. It knows the words of
    the domain and copies from its input, but has never seen an MR paired
    with its sentence. Measured on the offline defaults: after 3 epochs at
    3e-3 it restores 88% of unseen sentences exactly (after 2 epochs at
    1e-3, 5%: a prefix then steers it to the right template with the wrong
    names).

    Args:
        model: the `T5Seq2SeqLM` to train, no method applied yet.
        texts: list of str. MRs and sentences, unpaired.
        epochs: int. Number of epochs.
        batch_size: int. Batch size.
        seed: int. Seed of the noise.
    """
    compile_and_build(model, keras.optimizers.Adam(3e-3))
    start = time.perf_counter()
    history = model.fit(
        batches(denoising_data(texts, seed), batch_size, seed),
        epochs=epochs,
        verbose=0,
    )
    print(
        f"Pretrained the base model as a denoising autoencoder on "
        f"{len(texts)} texts: loss {history.history['loss'][-1]:.2f} "
        f"({time.perf_counter() - start:.0f} s)"
    )


def preset_seq2seq_lm(preset, sequence_lengths):
    """`T5Seq2SeqLM.from_preset`, with this task's sequence lengths.

    Args:
        preset: str. A keras-hub preset name or a local directory.
        sequence_lengths: tuple of int. Encoder and decoder lengths.
    """
    model = keras_hub.models.T5Seq2SeqLM.from_preset(preset)
    # E2E's MRs and sentences are short; the preset's 512 wastes compute.
    preprocessor = model.preprocessor
    preprocessor.encoder_sequence_length = sequence_lengths[0]
    preprocessor.decoder_sequence_length = sequence_lengths[1]
    return model


def parse_args(description, defaults, add_method_args):
    """Command-line arguments shared by the table-to-text examples.

    Args:
        description: str. The script's one-line description.
        defaults: dict. `{"default": {...}, "tiny": {...}}`: the values of
            arguments not given (`train`, `epochs`, ...), for a normal run
            and for `--tiny`.
        add_method_args: callable. Adds the method's own arguments to the
            `argparse.ArgumentParser` it is given.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", help="keras-hub T5 preset name or dir")
    parser.add_argument("--data", help="E2E CSV (mr,ref), e.g. trainset.csv")
    parser.add_argument("--val-data", help="E2E CSV for validation")
    parser.add_argument("--train", type=int, help="training pairs")
    parser.add_argument("--val", type=int, help="validation MRs")
    parser.add_argument("--epochs", type=int)
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        help="offline only: denoising epochs of the base (0: random base)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=3, help="sentences shown")
    parser.add_argument("--output", help="adapter directory")
    parser.add_argument(
        "--tiny", action="store_true", help="smallest run, for CI"
    )
    add_method_args(parser)
    args = parser.parse_args()
    if args.val_data and not args.data:
        parser.error("--val-data needs --data (the training file)")
    if args.preset and args.tiny:
        parser.error("--tiny is for the offline model, not --preset")
    if args.preset and args.pretrain_epochs:
        parser.error("--pretrain-epochs pretrains the offline model only")
    for name, value in defaults["tiny" if args.tiny else "default"].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


@dataclasses.dataclass
class Setup:
    """What a table-to-text script works on.

    Args:
        task: the `TableToText` data.
        model: the `T5Seq2SeqLM` to fine-tune.
        fresh_model: callable. Makes a new model with the same base weights.
        workdir: str. A scratch directory.
    """

    task: TableToText
    model: keras.Model
    fresh_model: object
    workdir: str


def setup(args):
    """Loads the data and the base model that `args` ask for.

    Offline (no `--preset`), the base is a small T5 made here: a
    SentencePiece vocabulary trained on the training text, random weights,
    then `--pretrain-epochs` of denoising (`pretrain`).
    """
    require_packages()
    keras.utils.set_random_seed(args.seed)
    if args.data:
        task = e2e_task(
            args.data, args.val_data, args.train, args.val, seed=args.seed
        )
    else:
        task = synthetic_task(args.train, args.val, seed=args.seed)
    print(
        f"Data: {len(task.train_mrs)} training pairs, {len(task.val_mrs)} "
        f"validation MRs ({sum(map(len, task.val_refs))} references)"
    )
    workdir = tempfile.mkdtemp(prefix="keras-peft-table-to-text-")
    if args.preset:

        def fresh_model():
            return preset_seq2seq_lm(args.preset, SEQUENCE_LENGTHS)

        return Setup(task, fresh_model(), fresh_model, workdir)
    tokenizer = train_tokenizer(task.texts(), VOCABULARY_SIZE)
    sizes = TINY_T5 if args.tiny else SMALL_T5
    model = small_seq2seq_lm(tokenizer, sizes, SEQUENCE_LENGTHS)
    base_weights = os.path.join(workdir, "base.weights.h5")

    def fresh_model():
        return small_seq2seq_lm(
            tokenizer, sizes, SEQUENCE_LENGTHS, base_weights
        )

    if args.pretrain_epochs:
        pretrain(
            model,
            task.texts(),
            args.pretrain_epochs,
            args.batch_size,
            args.seed,
        )
        model.backbone.save_weights(base_weights)
        # A new model on the saved weights, as if loaded from a checkpoint:
        # the pretraining's optimizer stays behind with the old one.
        model = fresh_model()
    else:
        model.backbone.save_weights(base_weights)
    return Setup(task, model, fresh_model, workdir)


def print_summary(model):
    """Prints the trainable parameters, and the groups that train."""
    print(keras_peft.trainable_summary(model))
    groups = keras_peft.variable_groups(model)
    print(f"Variable groups that train: {', '.join(groups)}")


def generate(model, mrs):
    """Greedy decoding of `mrs` with keras-hub's cached decoder.

    Traced (keras-hub's default): tracing costs about what one eager call
    does, and a model keeps its traced function, so later calls (after
    `fit`, say) are fast. A model not yet compiled with a greedy sampler
    is compiled again (a new optimizer): call it before `compile` or after
    training, not between.
    """
    if not isinstance(model.sampler, keras_hub.samplers.GreedySampler):
        model.compile(sampler="greedy")
    outputs = model.generate(mrs, max_length=SEQUENCE_LENGTHS[1])
    return [str(text).strip() for text in outputs]


def score(predictions, references):
    """Corpus BLEU and mean ROUGE-L F1, both in [0, 100].

    BLEU is keras-hub's (SacreBLEU's tokenization) against every reference
    of each MR. keras-hub's `RougeL` takes one reference per prediction, so
    each prediction is scored against its best-matching reference (as
    `rouge_score`'s `score_multi` does) and those scores are averaged.
    Not comparable with the official E2E scorer's numbers: keras-hub's
    BLEU takes the brevity penalty from the shortest reference, which
    favours many-reference sets such as E2E's.

    Args:
        predictions: list of str.
        references: list of lists of str, the references of each prediction.
    """
    import tensorflow as tf

    bleu = keras_hub.metrics.Bleu()
    # keras-hub divides by the predictions' length: 0 when all are empty.
    with np.errstate(divide="ignore"):
        bleu.update_state(tf.ragged.constant(references), predictions)
    rouge = keras_hub.metrics.RougeL()
    best = []
    for prediction, refs in zip(predictions, references):
        scores = []
        for ref in refs:
            rouge.reset_state()
            rouge.update_state(ref, prediction)
            scores.append(float(rouge.result()["f1_score"]))
        best.append(max(scores))
    return 100 * float(bleu.result()), 100 * float(np.mean(best))


def evaluate(model, task, label, show=0):
    """Generates a sentence for every validation MR and scores them.

    Args:
        model: the `T5Seq2SeqLM`.
        task: the `TableToText` data.
        label: str. Starts the printed line of scores.
        show: int. How many MRs to print with their generated sentence.

    Returns:
        The generated sentences.
    """
    start = time.perf_counter()
    predictions = generate(model, task.val_inputs())
    seconds = time.perf_counter() - start
    shown = zip(task.val_mrs, task.val_refs, predictions)
    for mr, refs, prediction in list(shown)[:show]:
        print(f"  MR:        {mr}\n  generated: {prediction}")
        print(f"  reference: {refs[0]}")
    bleu, rouge_l = score(predictions, task.val_refs)
    print(
        f"{label}: BLEU {bleu:.1f}, ROUGE-L {rouge_l:.1f} on "
        f"{len(predictions)} validation MRs (generated in {seconds:.1f} s)"
    )
    return predictions


def train(model, task, args):
    """Compiles and fits `model`, scoring its sentences before and after.

    One learning rate for every trainable variable: `T5Seq2SeqLM` has no
    head of its own (its output layer is the token embedding, frozen with
    the backbone), so there is no group to give another rate with
    `keras_peft.GroupedOptimizer`.

    Returns:
        The sentences generated after training, one per validation MR.
    """
    compile_and_build(
        model, keras.optimizers.Adam(args.learning_rate), sampler="greedy"
    )
    evaluate(model, task, "Before training", show=args.show)
    start = time.perf_counter()
    history = model.fit(
        batches(task.train_data(), args.batch_size, args.seed),
        epochs=args.epochs,
        verbose=1,
    )
    losses = history.history["loss"]
    print(
        f"Training loss {losses[0]:.3f} (epoch 1) -> {losses[-1]:.3f} "
        f"(epoch {len(losses)}) in {time.perf_counter() - start:.0f} s"
    )
    return evaluate(model, task, "After training", show=args.show)


def fixed_batch(model, task, size=8):
    """A preprocessed batch of validation pairs, to compare logits on."""
    data = task.val_data()
    x, _, _ = model.preprocessor(
        {key: value[:size] for key, value in data.items()}
    )
    return x


def logits(model, batch):
    """`model`'s logits on a preprocessed `batch`, as a NumPy array."""
    return keras.ops.convert_to_numpy(model(batch, training=False))


def check_same_outputs(label, expected, model, batch, task, predictions):
    """Checks that `model` computes what another model did.

    Its logits on `batch` must equal `expected` to `TOLERANCE` times the
    largest logit (float32 rounding: the two may compute the same function
    with other kernels, e.g. a stored prefix or a merged kernel), and it
    must generate the same sentence for every validation MR. Exits with an
    error otherwise.

    Args:
        label: str. What `model` is, for the printed line.
        expected: array. The other model's logits on `batch`.
        model: the `T5Seq2SeqLM` to check.
        batch: a preprocessed batch (`fixed_batch`).
        task: the `TableToText` data.
        predictions: list of str. The other model's sentences, one per
            validation MR.
    """
    difference = float(np.max(np.abs(logits(model, batch) - expected)))
    largest = float(np.max(np.abs(expected)))
    same = generate(model, task.val_inputs()) == predictions
    print(
        f"{label}: max logit difference {difference:.1e} (largest logit "
        f"{largest:.1f}); same sentences for all {len(predictions)} "
        f"validation MRs: {same}"
    )
    if difference > TOLERANCE * max(1.0, largest) or not same:
        raise SystemExit(f"{label}: outputs differ from the trained model's.")
    print(f"OK: {label.lower()} reproduces the trained model's outputs.")


def save_and_reload(model, setup_, args, predictions):
    """Saves the adapter, loads it into a fresh model and checks outputs
    (`check_same_outputs`).

    Args:
        model: the trained `T5Seq2SeqLM`.
        setup_: the `Setup`.
        args: the parsed arguments.
        predictions: list of str. `model`'s sentences, one per validation MR.

    Returns:
        The reloaded model.
    """
    adapter_dir = args.output or os.path.join(setup_.workdir, "adapter")
    keras_peft.save_adapter(model, adapter_dir)
    files = sorted(os.listdir(adapter_dir))
    size = sum(os.path.getsize(os.path.join(adapter_dir, f)) for f in files)
    print(
        f"Saved adapter to {adapter_dir}: {', '.join(files)} "
        f"({size / 1024:.1f} KiB)"
    )
    batch = fixed_batch(model, setup_.task)
    fresh = setup_.fresh_model()
    keras_peft.load_adapter(fresh, adapter_dir)
    check_same_outputs(
        "Reloaded model",
        logits(model, batch),
        fresh,
        batch,
        setup_.task,
        predictions,
    )
    return fresh


if __name__ == "__main__":
    sys.exit("The examples' shared module: run prefix_tuning.py or lora_t5.py")
