import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(params=sorted(helpers.MODEL_CASES))
def model_case(request):
    return helpers.MODEL_CASES[request.param]


@pytest.fixture(params=sorted(helpers.METHOD_CASES))
def method_case(request):
    return helpers.METHOD_CASES[request.param]
