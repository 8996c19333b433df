from keras_peft.lora.config import LoRAConfig
from keras_peft.lora.merge import merge_lora
from keras_peft.lora.merge import unmerge_lora
from keras_peft.lora.method import LoRAMethod
