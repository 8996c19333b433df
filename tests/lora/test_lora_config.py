import json

import pytest

import keras_peft


def test_defaults_match_the_documented_api():
    config = keras_peft.LoRAConfig()
    assert (config.rank, config.alpha, config.dropout) == (8, 16.0, 0.0)
    assert config.targets is None and config.bias == "none"


def test_json_round_trip():
    config = keras_peft.LoRAConfig(
        rank=4, alpha=8, dropout=0.1, targets=["query"], bias="lora_only"
    )
    data = json.loads(config.to_json())
    assert data["method"] == "lora"
    assert keras_peft.config_from_dict(data) == config
    assert keras_peft.LoRAConfig.from_dict(data) == config


def test_targets_string_becomes_tuple_and_config_is_frozen():
    config = keras_peft.LoRAConfig(targets="value")
    assert config.targets == ("value",)
    with pytest.raises(AttributeError):
        config.rank = 3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 0}, "rank"),
        ({"rank": -2}, "rank"),
        ({"rank": True}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"dropout": 1}, "dropout"),
        ({"dropout": -0.5}, "dropout"),
        ({"bias": "some"}, "bias"),
        ({"targets": []}, "targets"),
        ({"targets": [""]}, "targets"),
        ({"targets": ["query("]}, "regular"),
        ({"use_rslora": "yes"}, "use_rslora"),
    ],
)
def test_bad_values_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_peft.LoRAConfig(**kwargs)


def test_unknown_keys_and_methods_are_rejected():
    with pytest.raises(ValueError, match="Unknown LoRAConfig fields"):
        keras_peft.LoRAConfig.from_dict({"method": "lora", "ranks": 3})
    with pytest.raises(ValueError, match="Unknown keras-peft method"):
        keras_peft.config_from_dict({"method": "nope"})
    with pytest.raises(ValueError, match="'method'"):
        keras_peft.config_from_dict({"rank": 3})
