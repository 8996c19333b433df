import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# JAX compiles each op of an eager call for its shapes: tests (and test
# processes) that build the same tiny models share those programs through
# JAX's on-disk cache (a first call 15 s, a cached one 3 s). Keys include
# JAX's version, so a stale entry is never used.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "keras-peft-tests-jax-cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if "PYTEST_XDIST_WORKER" in os.environ:
    # One test process per core (pytest -n auto): TensorFlow's own thread
    # pools would only compete with the other processes for the cores.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch's pool
    if os.environ["KERAS_BACKEND"] == "jax":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false"
        ).strip()

import random  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests import helpers  # noqa: E402


def pytest_collection_modifyitems(items):
    """The real-checkpoint tests (a minute or more each) first: with
    pytest-xdist the other tests then fill the cores around them, instead of
    the run ending on a long test while the other cores idle."""
    items.sort(key=lambda item: item.get_closest_marker("large") is None)


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


def pytest_generate_tests(metafunc):
    """`model_case` and `method_case` arguments: every (model x method)
    pair that applies (BitFit has no T5: T5 has no biases)."""
    names = metafunc.fixturenames
    if "model_case" in names and "method_case" in names:
        pairs = helpers.model_method_pairs()
        metafunc.parametrize(
            "model_case,method_case",
            [
                (helpers.MODEL_CASES[m], helpers.METHOD_CASES[n])
                for m, n in pairs
            ],
            ids=[f"{m}-{n}" for m, n in pairs],
        )
    elif "model_case" in names:
        metafunc.parametrize(
            "model_case",
            [helpers.MODEL_CASES[m] for m in sorted(helpers.MODEL_CASES)],
            ids=sorted(helpers.MODEL_CASES),
        )
    elif "method_case" in names:
        metafunc.parametrize(
            "method_case",
            [helpers.METHOD_CASES[m] for m in sorted(helpers.METHOD_CASES)],
            ids=sorted(helpers.METHOD_CASES),
        )
