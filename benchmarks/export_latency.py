"""Serving latency of exported SavedModels: merged LoRA and prefix vs base.

Exports, with `keras_peft.export_saved_model` (defaults: `merge=True`),
three `BertTextClassifier`s over the same backbone weights:

- `base`: no method applied;
- `lora`: `LoRAConfig(rank=8, alpha=16)` with random `A` and `B` (as after
  training), exported merged: LoRA folded into the kernels;
- `prefix`: `PrefixTuningConfig(length=30)` (reparametrized), exported with
  its MLP ejected: 30 extra keys and values at every attention layer.

Each SavedModel is loaded with `tf.saved_model.load` and its `serve`
endpoint called on the same random token ids (`--batch` x `--seq`). The
first calls are warm-up; timed calls alternate between the exports in
rounds, rotating their order, so that background load affects all alike.
The figure is the median over the timed calls. The backbone is the real
MiniLM-L6 checkpoint of `../shared` when `../shared/tools/minilm` gives it,
else a random BERT of the same shape (6 layers, hidden 384, 12 heads).

Targets: merged LoRA / base <= 1.02. The prefix export's ratio is reported:
its attention attends to `seq + 30` keys, so it costs more by design.

Results replace the `export_latency` section of `benchmarks/RESULTS.md`.
Numbers are only meaningful on an otherwise idle machine.

Run:

    python benchmarks/export_latency.py
    python benchmarks/export_latency.py --calls 5 --no-write
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import results_file  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_peft  # noqa: E402
from tests import helpers  # noqa: E402

MINILM = dict(
    vocabulary_size=30522,
    num_layers=6,
    num_heads=12,
    hidden_dim=384,
    intermediate_dim=1536,
    max_sequence_length=512,
)


def _backbone():
    path = helpers.minilm_path()
    if path:
        return keras_hub.models.BertBackbone.from_preset(path), "MiniLM-L6"
    return keras_hub.models.BertBackbone(**MINILM), "random MiniLM-shaped"


def _classifier(backbone, weights):
    model = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone.from_config(backbone.get_config()),
        num_classes=2,
        preprocessor=None,
    )
    model.backbone.set_weights(weights)
    return model


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        variable.assign(
            rng.normal(0, 0.02, variable.shape).astype(variable.dtype)
        )


def _exports(directory, backbone):
    weights = backbone.get_weights()
    models = {"base": _classifier(backbone, weights)}
    models["lora"] = keras_peft.apply(
        _classifier(backbone, weights), keras_peft.LoRAConfig(rank=8, alpha=16)
    )
    models["prefix"] = keras_peft.apply(
        _classifier(backbone, weights), keras_peft.PrefixTuningConfig(length=30)
    )
    _randomize(models["lora"], 1)
    _randomize(models["prefix"], 2)
    head = models["base"].get_layer("logits").get_weights()
    for model in models.values():
        model.get_layer("logits").set_weights(head)
    paths = {}
    for name, model in models.items():
        paths[name] = os.path.join(directory, name)
        keras_peft.export_saved_model(model, paths[name])
    return paths


def _inputs(batch, seq):
    rng = np.random.default_rng(0)
    return {
        "token_ids": tf.constant(
            rng.integers(1000, 30000, (batch, seq)), tf.int32
        ),
        "segment_ids": tf.zeros((batch, seq), tf.int32),
        "padding_mask": tf.ones((batch, seq), tf.int32),
    }


def _parameter_count(loaded):
    return sum(int(np.prod(v.shape)) for v in loaded.variables)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    backbone, backbone_name = _backbone()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        paths = _exports(directory, backbone)
        loaded = {name: tf.saved_model.load(p) for name, p in paths.items()}
        sizes = {name: _parameter_count(m) for name, m in loaded.items()}
        inputs = _inputs(args.batch, args.seq)
        for model in loaded.values():
            for _ in range(args.warmup):
                model.serve(inputs).numpy()
        times = {name: [] for name in loaded}
        order = list(loaded)
        for call in range(args.calls):
            rotated = order[call % len(order) :] + order[: call % len(order)]
            for name in rotated:
                start = time.perf_counter()
                loaded[name].serve(inputs).numpy()
                times[name].append(time.perf_counter() - start)
    load_end = os.getloadavg()[0]

    median = {name: statistics.median(t) for name, t in times.items()}
    rows = [
        f"| {name} | {median[name] * 1000:.1f} | "
        f"{median[name] / median['base']:.3f} | {sizes[name]:,} |"
        for name in order
    ]
    body = "\n".join(
        [
            "## Serving latency of exported SavedModels "
            "(`benchmarks/export_latency.py`)",
            "",
            f"{datetime.date.today()}, {results_file.machine()}. "
            f"{backbone_name} `BertTextClassifier`, `serve` on batch "
            f"{args.batch} x {args.seq} tokens, median of {args.calls} "
            f"calls each (after {args.warmup} warm-up calls), alternating. "
            f"Load average {load_start:.2f} at the start, {load_end:.2f} "
            "at the end.",
            "",
            "| export | median ms | / base | exported parameters |",
            "|---|---|---|---|",
            *rows,
            "",
            "Target: merged LoRA / base <= 1.02 "
            f"({'met' if median['lora'] / median['base'] <= 1.02 else 'missed'}"
            "). The prefix (l = 30, MLP ejected) attends to "
            f"{args.seq} + 30 keys at each layer.",
        ]
    )
    print(body)
    if not args.no_write:
        results_file.update_section("export_latency", body)


if __name__ == "__main__":
    main()
