import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if "PYTEST_XDIST_WORKER" in os.environ:
    # One test process per core (pytest -n auto): TensorFlow's own thread
    # pools would only compete with the other processes for the cores.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(params=sorted(helpers.MODEL_CASES))
def model_case(request):
    return helpers.MODEL_CASES[request.param]


@pytest.fixture(params=sorted(helpers.METHOD_CASES))
def method_case(request):
    return helpers.METHOD_CASES[request.param]
