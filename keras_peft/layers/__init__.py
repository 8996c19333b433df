"""Keras layers of keras-peft, usable directly in any Keras model."""

from keras_peft.layers.adapter import Adapter
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.lora_dense import LoRADense
from keras_peft.layers.mam_block import MAMBlock
from keras_peft.layers.multi_head_parallel_adapter import (
    MultiHeadParallelAdapter,
)
from keras_peft.layers.parallel_adapter import ParallelAdapter
from keras_peft.layers.prefix_attention import PrefixAttention
from keras_peft.layers.prefix_reparametrization import PrefixReparametrization
from keras_peft.layers.prompt_embedding import PromptEmbedding
from keras_peft.layers.wrapper import Wrapper
