"""Train a keras-peft method on one device, several, several workers or a TPU.

The same training code under each `tf.distribute` strategy (TensorFlow) or
Keras' `DataParallel` distribution (JAX): build, apply, compile and fit inside
the strategy's scope, on a `tf.data` pipeline with static shapes (padded,
fixed-size batches, as a TPU requires). Only the chief saves the adapter.

Offline by default: the small random BERT classifier and synthetic sentiment
task of `quickstart.py`. `--preset` trains a real checkpoint instead.

    # One device (a GPU if there is one).
    python examples/train_distributed.py --strategy one
    # Every local GPU; on a CPU-only machine, --cpu-devices splits the CPU
    # into that many logical devices to try it.
    python examples/train_distributed.py --strategy mirrored --cpu-devices 2
    # One process per worker; TF_CONFIG names the workers and this one's
    # index (see docs/distributed.md).
    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
      "task": {"type": "worker", "index": 0}}' \\
      python examples/train_distributed.py --strategy multiworker
    # A Cloud TPU (a TPU VM: --tpu local).
    python examples/train_distributed.py --strategy tpu --tpu local
    # JAX: data parallel over every local device.
    KERAS_BACKEND=jax python examples/train_distributed.py \\
      --strategy data_parallel
"""

import argparse
import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import sentiment_task  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_peft  # noqa: E402

STRATEGIES = ("one", "mirrored", "multiworker", "tpu", "data_parallel")
METHODS = {
    "lora": lambda: keras_peft.LoRAConfig(rank=8, alpha=16),
    "prompt": lambda: keras_peft.PromptTuningConfig(length=10, init="random"),
    "prefix": lambda: keras_peft.PrefixTuningConfig(length=10),
    "adapter": lambda: keras_peft.AdapterConfig(bottleneck=16),
    "parallel_adapter": lambda: keras_peft.AdapterConfig(
        bottleneck=16, parallel=True, scale=4.0
    ),
    "mam": lambda: keras_peft.MAMConfig(prefix_length=10, bottleneck=16),
    "bitfit": lambda: keras_peft.BitFitConfig(),
    # Every method at once, adapters of each kind sharing their sites.
    "all": lambda: [
        keras_peft.PromptTuningConfig(length=10, init="random"),
        keras_peft.PrefixTuningConfig(length=10, reparam_hidden=64),
        keras_peft.LoRAConfig(rank=8, alpha=16),
        keras_peft.AdapterConfig(bottleneck=16),
        keras_peft.AdapterConfig(
            bottleneck=16, location="both", parallel=True, scale="learned"
        ),
        keras_peft.AdapterConfig(
            bottleneck=4, location="attn", parallel=True, multi_head=True
        ),
        keras_peft.BitFitConfig(),
    ],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="one")
    parser.add_argument("--method", choices=sorted(METHODS), default="lora")
    parser.add_argument("--preset", help="keras-hub preset name or directory")
    parser.add_argument(
        "--tpu", default="local", help="TPU name or address (--strategy tpu)"
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="split the CPU into this many logical devices (mirrored on a "
        "machine without GPUs)",
    )
    parser.add_argument("--train", type=int, default=512, help="sentences")
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument(
        "--head-learning-rate",
        type=float,
        default=2e-2,
        help="the new classification head's rate",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=1,
        help="train steps per compiled call (a TPU wants several)",
    )
    parser.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile with XLA (default: on for TPUs, Keras' choice else)",
    )
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", help="adapter directory the chief saves (optional)"
    )
    parser.add_argument(
        "--weights-out",
        help="an .npz of this process's trained variables (for checks)",
    )
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    return parser.parse_args(argv)


def split_cpu(count):
    """Splits the first CPU into `count` logical devices; must run before
    TensorFlow initializes its devices."""
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` with the `reduce` Keras' `fit` expects.

    With Keras 3.15 and TensorFlow 2.21, `fit` under this strategy fails
    twice in `reduce` (keras-team/keras#20329 and #20585, open), for any
    keras-hub model:
    - it reduces the first batch, a dict of inputs, to build the model
      symbolically; this strategy reduces single tensors only;
    - it averages each scalar log (the loss, each metric) with `axis=0`,
      which a scalar does not have.
    Here `reduce` goes leaf by leaf, as `MirroredStrategy`'s does, and
    averages a scalar over the replicas alone, which is what `axis=0`
    means for a vector of one value per replica.
    """

    def reduce(self, reduce_op, value, axis):
        def leaf(tensor):
            local = self.experimental_local_results(tensor)[0]
            rank = getattr(getattr(local, "shape", None), "rank", None)
            scalar = axis is not None and rank == 0
            return super(_MultiWorkerMirroredStrategy, self).reduce(
                reduce_op, tensor, None if scalar else axis
            )

        return tf.nest.map_structure(leaf, value)


def make_strategy(name, tpu=None):
    """Creates the strategy (or, on JAX, the distribution) called `name`.

    Args:
        name: str. One of `STRATEGIES`.
        tpu: str. The TPU's name or address, for `name="tpu"`.

    Returns:
        `(scope, is_chief, replicas)`: a context manager that makes new
        variables distributed, whether this process writes files (the one
        chief of a cluster), and the number of model replicas a global
        batch is split over.
    """
    if name == "data_parallel":
        if keras.backend.backend() != "jax":
            raise ValueError(
                "--strategy data_parallel is Keras' distribution API, "
                "for KERAS_BACKEND=jax; with TensorFlow use mirrored, "
                "multiworker or tpu."
            )
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        return contextlib.nullcontext(), True, len(devices)
    if name == "one" and keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext(), True, 1
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"--strategy {name} is tf.distribute, for KERAS_BACKEND="
            "tensorflow; with JAX use data_parallel."
        )
    if name == "one":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or (
            tf.config.list_logical_devices("CPU")
        )
        strategy = tf.distribute.MirroredStrategy(
            [device.name for device in devices]
        )
    elif name == "multiworker":
        strategy = _MultiWorkerMirroredStrategy()
    else:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    # The strategy's own answer: worker 0 of a cluster without a "chief"
    # task, the chief of one with it, and the one process otherwise.
    is_chief = strategy.extended.should_checkpoint
    return strategy.scope(), is_chief, strategy.num_replicas_in_sync


def build_model(args):
    """The classifier, with its preprocessor detached: the data pipeline
    tokenizes and pads on the host, and the model sees fixed shapes."""
    if args.preset:
        model = sentiment_task.preset_classifier(
            args.preset, dropout=args.dropout
        )
    else:
        # 12 positions hold the longest sentence; a prompt takes 10 more of
        # the 24 the small model has.
        model = sentiment_task.small_classifier(
            sequence_length=12, dropout=args.dropout
        )
    preprocessor = model.preprocessor
    model.preprocessor = None
    return model, preprocessor


def make_data(preprocessor, size, batch, seed):
    """Fixed-size batches of padded token ids: `drop_remainder` keeps the
    batch dimension static, so a compiled step never meets a new shape."""
    sentences, labels = sentiment_task.make_dataset(size, seed)
    features = preprocessor(tf.constant(sentences))
    # Integers, as the backbone declares its inputs: with the
    # preprocessor's boolean mask, fit under MirroredStrategy fails (an
    # AddN over booleans; TensorFlow 2.21, keras-hub 0.32).
    features = {k: tf.cast(v, "int32") for k, v in features.items()}
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    return dataset.batch(batch, drop_remainder=True).prefetch(2)


def first_batch(data):
    """The inputs of `data`'s first batch, as NumPy arrays."""
    features, _ = next(iter(data))
    return {k: v.numpy() for k, v in features.items()}


def check_reload(args, model, data):
    """Loads the saved adapter into a fresh model with the same base
    weights (outside any strategy) and checks its logits on the first
    batch against the trained model's."""
    keras.utils.set_random_seed(args.seed)  # the base weights `train` drew
    fresh, _ = build_model(args)
    keras_peft.load_adapter(fresh, args.output)
    batch = first_batch(data)
    expected = keras.ops.convert_to_numpy(model(batch, training=False))
    reloaded = keras.ops.convert_to_numpy(fresh(batch, training=False))
    # Close, not exact: a prefix is saved as the prefix its MLP computes.
    np.testing.assert_allclose(reloaded, expected, atol=1e-5)
    print("OK: the reloaded adapter reproduces the trained model's logits")


def _jit_compile(args):
    if args.xla is not None:
        return args.xla
    return True if args.strategy == "tpu" else "auto"


def train(args):
    """Builds, applies, compiles and fits under `args.strategy`.

    Returns:
        `(model, history, is_chief, data)`.
    """
    keras.utils.set_random_seed(args.seed)
    scope, is_chief, replicas = make_strategy(args.strategy, args.tpu)
    if args.batch % replicas:
        raise ValueError(
            f"--batch {args.batch} must split evenly over {replicas} replicas."
        )
    with scope:
        model, preprocessor = build_model(args)
        keras_peft.apply(model, METHODS[args.method]())
        model.compile(
            optimizer=keras_peft.GroupedOptimizer(
                keras.optimizers.Adam(args.learning_rate),
                learning_rates={"head": args.head_learning_rate},
                model=model,
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=_jit_compile(args),
            steps_per_execution=args.steps_per_execution,
        )
    if is_chief:
        print(keras_peft.trainable_summary(model))
    data = make_data(preprocessor, args.train, args.batch, args.seed)
    history = model.fit(data, epochs=args.epochs, verbose=args.verbose)
    return model, history, is_chief, data


def main(argv=None):
    args = parse_args(argv)
    if args.cpu_devices:
        if args.strategy != "mirrored":
            raise ValueError(
                f"--cpu-devices {args.cpu_devices} splits the CPU for "
                f"--strategy mirrored; received --strategy {args.strategy}."
            )
        split_cpu(args.cpu_devices)
    model, history, is_chief, data = train(args)
    losses = history.history["loss"]
    accuracy = history.history["accuracy"]
    print(
        f"{args.strategy}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
        f"training accuracy {accuracy[-1]:.4f}"
    )
    if args.weights_out:
        arrays = {
            v.path: keras.ops.convert_to_numpy(v)
            for v in model.trainable_weights
        }
        np.savez(args.weights_out, **arrays)
    if args.output and is_chief:
        # The chief alone writes: workers never race on the directory.
        keras_peft.save_adapter(model, args.output)
        print(f"saved {args.output}")
        check_reload(args, model, data)
    print(json.dumps({"losses": losses, "chief": is_chief}))


if __name__ == "__main__":
    main()
