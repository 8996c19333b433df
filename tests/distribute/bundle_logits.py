"""Loads an adapter bundle into `examples/train_distributed.py`'s model,
built from the same seed, and saves its logits on the first training batch.

    python tests/distribute/bundle_logits.py ADAPTER_DIR OUT.npy FLAGS...

FLAGS are the example's. In a process of its own: seeding Keras resets
TensorFlow's eager context, which a test process shares with other tests.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import train_distributed  # noqa: E402

import keras_peft  # noqa: E402


def main(path, out, *flags):
    args = train_distributed.parse_args(list(flags))
    keras.utils.set_random_seed(args.seed)  # the base weights `train` drew
    model, preprocessor = train_distributed.build_model(args)
    keras_peft.load_adapter(model, path)
    data = train_distributed.make_data(
        preprocessor, args.train, args.batch, args.seed
    )
    logits = model(train_distributed.first_batch(data), training=False)
    np.save(out, keras.ops.convert_to_numpy(logits))


if __name__ == "__main__":
    main(*sys.argv[1:])
