"""Configs refuse unknown keywords, and say what HF PEFT's and AdapterHub's
names are called here."""

import copy
import dataclasses
import pickle

import pytest

import keras_peft


@pytest.mark.parametrize(
    "config_class,kwargs,hint",
    [
        (keras_peft.LoRAConfig, {"r": 8}, "`rank`"),
        (keras_peft.LoRAConfig, {"lora_alpha": 16}, "`alpha`"),
        (keras_peft.LoRAConfig, {"lora_dropout": 0.1}, "`dropout`"),
        (keras_peft.LoRAConfig, {"target_modules": ["query"]}, "`targets`"),
        (keras_peft.PromptTuningConfig, {"num_virtual_tokens": 20}, "`length`"),
        (
            keras_peft.PromptTuningConfig,
            {"prompt_tuning_init": "TEXT"},
            "`init`",
        ),
        (
            keras_peft.PromptTuningConfig,
            {"prompt_tuning_init_text": "Classify"},
            "`init_text`",
        ),
        (keras_peft.PrefixTuningConfig, {"num_virtual_tokens": 20}, "`length`"),
        (
            keras_peft.PrefixTuningConfig,
            {"prefix_projection": True},
            "`reparam`",
        ),
        (
            keras_peft.PrefixTuningConfig,
            {"encoder_hidden_size": 512},
            "`reparam_hidden`",
        ),
        (keras_peft.AdapterConfig, {"reduction_factor": 16}, "`bottleneck`"),
        (keras_peft.AdapterConfig, {"non_linearity": "relu"}, "`activation`"),
        (keras_peft.AdapterConfig, {"is_parallel": True}, "`parallel`"),
        (keras_peft.AdapterConfig, {"mh_adapter": True}, "`location`"),
        (keras_peft.MAMConfig, {"num_virtual_tokens": 30}, "`prefix_length`"),
        (keras_peft.MAMConfig, {"prefix_projection": True}, "`reparam`"),
        (keras_peft.PrefixTuningConfig, {"prefix_length": 30}, "`length`"),
        (keras_peft.PrefixTuningConfig, {"flat": True}, "`reparam=False`"),
        (
            keras_peft.PrefixTuningConfig,
            {"bottleneck_size": 512},
            "`reparam_hidden`",
        ),
        (keras_peft.PromptTuningConfig, {"prompt_length": 10}, "`length`"),
        (keras_peft.PromptTuningConfig, {"prompt_init": "random"}, "`init`"),
        (keras_peft.LoRAConfig, {"task_type": "SEQ_CLS"}, "is not needed"),
        (keras_peft.BitFitConfig, {"modules_to_save": ["x"]}, "is not needed"),
        (keras_peft.LoRAConfig, {"use_dora": True}, "DoRA is not"),
        (keras_peft.LoRAConfig, {"layers_to_transform": [0]}, "`targets`"),
        (keras_peft.LoRAConfig, {"rank_pattern": {}}, "one `rank`"),
        (keras_peft.PrefixTuningConfig, {"num_layers": 12}, "from the model"),
        (keras_peft.PromptTuningConfig, {"token_dim": 768}, "from the model"),
    ],
)
def test_a_foreign_name_says_what_it_is_called_here(config_class, kwargs, hint):
    name = next(iter(kwargs))
    with pytest.raises(TypeError) as error:
        config_class(**kwargs)
    message = str(error.value)
    assert config_class.__name__ in message and repr(name) in message
    assert hint in message


def test_every_unknown_keyword_is_named_with_the_allowed_ones():
    with pytest.raises(TypeError) as error:
        keras_peft.LoRAConfig(rank=4, r=8, ranks=2)
    message = str(error.value)
    assert "['r', 'ranks']" in message
    assert "'rank'" in message and "'targets'" in message  # the allowed ones
    assert "`r`: keras-peft calls the rank `rank`" in message


def test_known_keywords_still_build_configs():
    config = keras_peft.LoRAConfig(rank=4, alpha=8, targets=["query"])
    assert (config.rank, config.alpha) == (4, 8)
    assert keras_peft.LoRAConfig.from_dict(config.to_dict()) == config


def test_an_hf_peft_name_at_the_top_level_says_ours():
    from keras_peft import LoraConfig
    from keras_peft import PeftModel
    from keras_peft import get_peft_model

    with pytest.raises(TypeError, match="Use keras_peft.LoRAConfig"):
        LoraConfig(r=8)
    with pytest.raises(TypeError, match=r"keras_peft.apply\(model, config\)"):
        get_peft_model(None, None)
    with pytest.raises(TypeError, match="keras_peft.load_adapter"):
        PeftModel.from_pretrained(None, "path")
    with pytest.raises(AttributeError, match="nothing"):
        keras_peft.nothing  # noqa: B018


def test_configs_still_copy_pickle_replace_and_take_positional_arguments():
    """Configs refuse unknown keywords in `__new__`: copies, pickles and
    `dataclasses.replace` (which all construct anew) keep working."""
    for config in [
        keras_peft.LoRAConfig(4, 8.0, targets=["query"]),
        keras_peft.MAMConfig(prefix_length=3, bottleneck=4),
        keras_peft.PromptTuningConfig(length=3, init="random"),
    ]:
        assert copy.deepcopy(config) == config
        assert pickle.loads(pickle.dumps(config)) == config
        assert keras_peft.config_from_dict(config.to_dict()) == config
    changed = dataclasses.replace(keras_peft.LoRAConfig(4), rank=2)
    assert changed == keras_peft.LoRAConfig(rank=2)
    assert keras_peft.LoRAConfig(4).rank == 4
    with pytest.raises(TypeError, match="`reparam`"):
        dataclasses.replace(keras_peft.MAMConfig(), prefix_projection=True)
