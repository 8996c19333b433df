import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if "PYTEST_XDIST_WORKER" in os.environ:
    # One test process per core (pytest -n auto): TensorFlow's own thread
    # pools would only compete with the other processes for the cores.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import random  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test draws the same random numbers whatever ran before it in
    its process (tests run in parallel, in an order that varies).

    Python's and NumPy's generators are what Keras initializers and layers
    without a seed draw from. Not `keras.utils.set_random_seed`: its
    `tf.random.set_seed` resets TensorFlow's eager context, which drops the
    resources (a SentencePiece tokenizer's) of module-scoped fixtures.
    """
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)


@pytest.fixture(params=sorted(helpers.MODEL_CASES))
def model_case(request):
    return helpers.MODEL_CASES[request.param]


@pytest.fixture(params=sorted(helpers.METHOD_CASES))
def method_case(request):
    return helpers.METHOD_CASES[request.param]
