"""Bottleneck adapters: sequential (Houlsby) and parallel (He et al.)."""

from keras_peft.adapters import method as _method  # registers the method
from keras_peft.adapters.config import AdapterConfig
