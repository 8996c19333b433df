"""keras-peft: parameter-efficient fine-tuning for Keras 3 and keras-hub."""

from keras_peft import layers
from keras_peft.adapters import AdapterConfig
from keras_peft.bitfit import BitFitConfig
from keras_peft.core.adapter_io import load_adapter
from keras_peft.core.adapter_io import save_adapter
from keras_peft.core.config import PeftConfig
from keras_peft.core.config import config_from_dict
from keras_peft.core.injection import applied_configs
from keras_peft.core.injection import apply
from keras_peft.core.summary import TrainableSummary
from keras_peft.core.summary import trainable_summary
from keras_peft.core.summary import variable_groups
from keras_peft.export import export_saved_model
from keras_peft.lora import LoRAConfig
from keras_peft.lora import merge_lora
from keras_peft.lora import unmerge_lora
from keras_peft.mam import MAMConfig
from keras_peft.optimizers import GroupedOptimizer
from keras_peft.prefix_tuning import PrefixTuningConfig
from keras_peft.prefix_tuning import eject_prefix
from keras_peft.prompt_tuning import PromptTuningConfig
from keras_peft.prompt_tuning import nearest_tokens
from keras_peft.version import __version__

# HF PEFT's names for what keras-peft calls otherwise.
_FOREIGN_NAMES = {
    "LoraConfig": "LoRAConfig",
    "get_peft_model": "apply",
    "PeftModel": "load_adapter",
}


def __getattr__(name):
    if name in _FOREIGN_NAMES:
        raise AttributeError(
            f"keras_peft has no {name!r} (an HF PEFT name): use "
            f"keras_peft.{_FOREIGN_NAMES[name]}."
        )
    raise AttributeError(f"module 'keras_peft' has no attribute {name!r}")
