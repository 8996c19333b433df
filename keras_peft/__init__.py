"""keras-peft: parameter-efficient fine-tuning for Keras 3 and keras-hub."""

from keras_peft import layers
from keras_peft.adapters import AdapterConfig
from keras_peft.bitfit import BitFitConfig
from keras_peft.core.adapter_io import load_adapter
from keras_peft.core.adapter_io import save_adapter
from keras_peft.core.config import PeftConfig
from keras_peft.core.config import config_from_dict
from keras_peft.core.foreign_names import foreign_name as _foreign_name
from keras_peft.core.injection import applied_configs
from keras_peft.core.injection import apply
from keras_peft.core.multi_task import MultiTaskModel
from keras_peft.core.multi_task import multi_task
from keras_peft.core.named_adapters import active_adapter
from keras_peft.core.named_adapters import adapter_names
from keras_peft.core.named_adapters import delete_adapter
from keras_peft.core.named_adapters import disabled
from keras_peft.core.named_adapters import set_active
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

# HF PEFT's names, importable so that `from keras_peft import LoraConfig`
# (an HF habit) says what to use instead of a bare ImportError.
LoraConfig = _foreign_name("LoraConfig", "keras_peft.LoRAConfig")
get_peft_model = _foreign_name(
    "get_peft_model", "keras_peft.apply(model, config), which works in place"
)
PeftModel = _foreign_name(
    "PeftModel", "keras_peft.load_adapter(model, path) to load an adapter"
)
