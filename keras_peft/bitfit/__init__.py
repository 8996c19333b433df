"""BitFit: train only the bias terms of the backbone."""

from keras_peft.bitfit import method as _method  # registers the method
from keras_peft.bitfit.config import BitFitConfig
