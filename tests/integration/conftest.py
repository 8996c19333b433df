"""The MiniLM checkpoint and SST-2, tokenized once for every test."""

import pytest

from tests.integration import minilm_sst2 as data


@pytest.fixture(scope="session")
def minilm():
    return data.checkpoint()


@pytest.fixture(scope="session")
def sst2(minilm):
    return data.split(minilm)
