"""Times T5 generation per token: no prefix vs keras-peft prefix tuning.

Measures the wall time of `keras_hub.models.T5Seq2SeqLM.generate` (greedy,
keras-hub's cached decoder: encoder once, then one decoder step per token
with key/value caches) on a randomly initialised `T5Backbone` on random
encoder token ids, for three variants built in one run. Two sizes
(`--model`): `t5-small`, the architecture of keras-hub's `t5_small_multi`
(vocab 32128, hidden 512, 6+6 layers, 8 heads, FFN 2048), and `tiny`
(vocab 1000, hidden 256, 4+4 layers, 4 heads, FFN 512), a toy where the
attention over the caches is most of a decoding step's work, so the
prefix's longer keys weigh the most. The variants:

- `base`: the model as it is;
- `prefix_reparam`: `keras_peft.apply(model,
  PrefixTuningConfig(length=30))`, the default `reparam=True`, so every
  attention layer computes its prefix through Li & Liang's MLP;
- `prefix_ejected`: the same prefix (weights copied from `prefix_reparam`)
  after `keras_peft.eject_prefix(model)`, which keeps the computed prefix
  and drops the MLP: the form a tuned prefix is deployed in.

Each variant is its own model instance holding identical base weights
(`set_weights`), compiled with `sampler="greedy"` after the prefix is
applied. `generate` runs with `stop_token_ids=None`, so every call decodes
the whole decoder length: with only position 0 of the decoder prompt
given, a length-`L` call generates `L - 1` tokens, and the per-token
latency is the call's time over `L - 1`. That time includes the encoder and
the seeding of the caches; the marginal per-token latency, the slope between
calls of two decoder lengths (`(t_L - t_S) / (L - S)`), is the decoding
loop's cost alone. The first calls (trace and compile) are warm-up and
never timed. Timed calls are taken in rounds that alternate between the
variants, rotating their order each round, so that background load affects
all three alike; reported figures are medians over all timed calls.

The target (from the paper): per-token latency with the prefix at most
1.10x of the latency without. The results replace the `t5_generate_prefix`
section of `benchmarks/RESULTS.md` (suffixed `_tiny` and `_xla` by those
options). Numbers are only meaningful on an otherwise idle machine.

Run:

    python benchmarks/t5_generate_prefix.py
    python benchmarks/t5_generate_prefix.py --model tiny --jit-compile
    python benchmarks/t5_generate_prefix.py --rounds 2 --warmup 1 --no-write
"""

import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import results_file  # noqa: E402

import keras_peft  # noqa: E402

VARIANTS = ("base", "prefix_reparam", "prefix_ejected")
LABELS = {
    "base": "no prefix",
    "prefix_reparam": "prefix (reparam MLP)",
    "prefix_ejected": "prefix (ejected)",
}
MODELS = {
    # keras-hub's `t5_small_multi` architecture, randomly initialised.
    "t5-small": dict(
        vocabulary_size=32128,
        num_layers=6,
        num_heads=8,
        hidden_dim=512,
        intermediate_dim=2048,
        key_value_dim=64,
        dropout=0.0,
    ),
    # A toy model where attention is most of the work.
    "tiny": dict(
        vocabulary_size=1000,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=512,
        dropout=0.0,
    ),
}
TARGET = 1.10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=30,
        help="timed rounds; each times every variant once per length, "
        "alternating variants",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed calls per variant"
    )
    parser.add_argument("--prefix", type=int, default=30, help="prefix length")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument(
        "--encoder-length", type=int, default=64, help="encoder tokens"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=32,
        help="decoder length L; a call generates L - 1 tokens",
    )
    parser.add_argument(
        "--short-length",
        type=int,
        default=8,
        help="second, shorter decoder length for the marginal per-token "
        "latency",
    )
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="t5-small", help="size"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile every variant's generate function with XLA",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print only; leave benchmarks/RESULTS.md alone (smoke runs)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.warmup < 1:
        parser.error("need --rounds >= 2 (quartiles) and --warmup >= 1")
    if not 2 <= args.short_length < args.max_length:
        parser.error("need 2 <= --short-length < --max-length")
    return args


def build_model(args):
    keras.utils.set_random_seed(args.seed)
    backbone = keras_hub.models.T5Backbone(**MODELS[args.model])
    return keras_hub.models.T5Seq2SeqLM(backbone, preprocessor=None)


def build_models(args):
    """The three variants, with identical base weights and prefixes."""
    base = build_model(args)
    base_weights = base.get_weights()
    models = {"base": base}
    for variant in VARIANTS[1:]:
        model = build_model(args)
        model.set_weights(base_weights)
        keras_peft.apply(model, keras_peft.PrefixTuningConfig(args.prefix))
        models[variant] = model
    # The ejected model starts from the very prefix the reparam one holds.
    models["prefix_ejected"].set_weights(models["prefix_reparam"].get_weights())
    keras_peft.eject_prefix(models["prefix_ejected"])
    for model in models.values():
        model.compile(
            sampler="greedy",
            jit_compile=True if args.jit_compile else "auto",
        )
    return models


def make_inputs(args, length):
    rng = np.random.default_rng(args.seed)
    encoder_shape = (args.batch, args.encoder_length)
    decoder_mask = np.zeros((args.batch, length), "int32")
    decoder_mask[:, 0] = 1
    inputs = {
        "encoder_token_ids": rng.integers(
            2, MODELS[args.model]["vocabulary_size"], encoder_shape
        ).astype("int32"),
        "encoder_padding_mask": np.ones(encoder_shape, "int32"),
        "decoder_token_ids": np.zeros((args.batch, length), "int32"),
        "decoder_padding_mask": decoder_mask,
    }
    # Tensors, not arrays, so every call hits the same traced function.
    return {k: keras.ops.convert_to_tensor(v) for k, v in inputs.items()}


def generate(model, inputs):
    outputs = model.generate(inputs, stop_token_ids=None)
    return np.asarray(outputs["decoder_token_ids"])


def tracing_count(model):
    """Traces of the model's generate `tf.function` (None if not one)."""
    function = model.generate_function
    if hasattr(function, "experimental_get_tracing_count"):
        return function.experimental_get_tracing_count()
    return None


def count_params(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def time_calls(models, inputs, args):
    """`times[length][variant]`: seconds of each timed `generate` call."""
    times = {length: {v: [] for v in models} for length in inputs}
    names = list(models)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for variant in names[shift:] + names[:shift]:
            for length, x in inputs.items():
                start = time.perf_counter()
                generate(models[variant], x)
                times[length][variant].append(time.perf_counter() - start)
    return times


def quartiles_ms(values):
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 1e3 * q1, 1e3 * statistics.median(values), 1e3 * q3


def describe(args):
    config = MODELS[args.model]
    return (
        f"vocab {config['vocabulary_size']}, hidden {config['hidden_dim']}, "
        f"{config['num_layers']} encoder + {config['num_layers']} decoder "
        f"layers, {config['num_heads']} heads, FFN "
        f"{config['intermediate_dim']}, dropout 0"
    )


def verdict(ok):
    return "PASS" if ok else "MISS"


def report(times, stats, args, wall):
    long, short = args.max_length, args.short_length
    tokens = long - 1
    med = {
        length: {v: statistics.median(t) for v, t in by_variant.items()}
        for length, by_variant in times.items()
    }
    per_token = {v: 1e3 * med[long][v] / tokens for v in VARIANTS}
    marginal = {
        v: 1e3 * (med[long][v] - med[short][v]) / (long - short)
        for v in VARIANTS
    }
    base_params = stats["base"]["params"]
    lines = [
        "## T5 generation latency with prefix tuning "
        "(`benchmarks/t5_generate_prefix.py"
        + ("" if args.model == "t5-small" else f" --model {args.model}")
        + (" --jit-compile`, XLA)" if args.jit_compile else "`)"),
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {results_file.machine()}",
        f"- Model `{args.model}`: random `T5Backbone` ({describe(args)}) "
        "in a `T5Seq2SeqLM` "
        f"(no preprocessor): {base_params:,} parameters; "
        f"`jit_compile` {stats['base']['jit_compile']}.",
        f"- Prefix tuning: `PrefixTuningConfig(length={args.prefix})` on "
        "every attention layer (encoder self-, decoder self- and cross-"
        "attention); reparam MLP width 512. Ejected: the same prefix after "
        "`keras_peft.eject_prefix`.",
        f"- `generate` (greedy, `stop_token_ids=None`): batch {args.batch}, "
        f"encoder length {args.encoder_length} (random token ids, no "
        f"padding), decoder length {long} with only position 0 given, so "
        f"{tokens} generated tokens per sequence. Per-token latency = "
        f"median call time / {tokens} (includes the encoder and cache "
        "seeding); marginal = (median call time at decoder length "
        f"{long} - at {short}) / {long - short}, the decoding loop alone.",
        f"- {args.warmup} untimed warm-up calls per variant and length "
        f"(trace and compile), then {args.rounds} rounds each timing one "
        "call per variant and length, alternating the variants (order "
        "rotated each round); medians over all timed calls. "
        f"Whole run {wall:.0f} s; 1-minute load average "
        f"{stats['load'][0]:.1f} at the start, {stats['load'][1]:.1f} at "
        "the end.",
        f"- Sanity: ejected tokens identical to reparam tokens: "
        f"{'yes' if stats['ejected_matches'] else 'NO'}; tokens differing "
        f"from the no-prefix model: {stats['changed']:.0%} of generated "
        "ones; retraced while timed: "
        f"{', '.join(stats['retraced']) or 'none'}.",
        "",
        "| variant | added params | call median (ms) | p25..p75 (ms) | "
        "per token (ms) | ratio | marginal per token (ms) | marginal ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        q1, q2, q3 = quartiles_ms(times[long][variant])
        added = stats[variant]["params"] - base_params
        lines.append(
            f"| {LABELS[variant]} | {added:,} | {q2:.1f} | "
            f"{q1:.1f}..{q3:.1f} | {per_token[variant]:.2f} | "
            f"{per_token[variant] / per_token['base']:.3f}x | "
            f"{marginal[variant]:.2f} | "
            f"{marginal[variant] / marginal['base']:.3f}x |"
        )
    lines += [
        "",
        "| target | measured | result |",
        "|---|---:|:---:|",
    ]
    for variant in VARIANTS[1:]:
        ratio = per_token[variant] / per_token["base"]
        lines.append(
            f"| {LABELS[variant]} per-token latency <= {TARGET:.2f}x no "
            f"prefix | {ratio:.3f}x | {verdict(ratio <= TARGET)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    # Build every model before warming any up: seeding the next model
    # (`keras.utils.set_random_seed`) clears TensorFlow's kernel caches.
    models = build_models(args)
    inputs = {
        length: make_inputs(args, length)
        for length in (args.max_length, args.short_length)
    }
    stats = {
        variant: {
            "params": count_params(model.weights),
            "jit_compile": model.jit_compile,
        }
        for variant, model in models.items()
    }
    tokens = {}
    for variant, model in models.items():
        for length, x in inputs.items():
            for _ in range(args.warmup):
                out = generate(model, x)
            if length == args.max_length:
                tokens[variant] = out[:, 1:]
        print(
            f"warmed up {variant}: {stats[variant]['params']:,} parameters",
            flush=True,
        )
    stats["ejected_matches"] = np.array_equal(
        tokens["prefix_ejected"], tokens["prefix_reparam"]
    )
    stats["changed"] = float(
        np.mean(tokens["prefix_reparam"] != tokens["base"])
    )
    traces = {v: tracing_count(m) for v, m in models.items()}
    times = time_calls(models, inputs, args)
    stats["retraced"] = [
        v for v, m in models.items() if tracing_count(m) != traces[v]
    ]
    stats["load"] = load_at_start, os.getloadavg()[0]
    body = report(times, stats, args, time.perf_counter() - started)
    print(body)
    if args.no_write:
        print("\n(--no-write: benchmarks/RESULTS.md left unchanged)")
    else:
        section = "t5_generate_prefix"
        if args.model != "t5-small":
            section += f"_{args.model}"
        if args.jit_compile:
            section += "_xla"
        results_file.update_section(section, body)
        print(f"\nwrote the {section} section of {results_file.RESULTS}")


if __name__ == "__main__":
    main()
