"""How BitFit plans itself on a model."""

import keras

from keras_peft.bitfit.config import BitFitConfig
from keras_peft.core import config as config_lib
from keras_peft.core import freezing
from keras_peft.core import method as method_lib
from keras_peft.core import targets as targets_lib


class BitFitMethod(method_lib.Method):
    name = "bitfit"
    config_class = BitFitConfig
    # The biases it keeps training are its parameters: counted as "bitfit".
    owns_kept_variables = True

    def plan(self, context, config, initialize=True):
        if config.targets is None:
            layers = freezing.layers_of(context.backbone)
        else:
            layers = targets_lib.find_targets(
                context.backbone,
                config.targets,
                (keras.layers.Layer,),
                "BitFit",
            )
            # A matched layer's sub-layers too: "transformer_layer_0" means
            # every bias of that block.
            layers = [
                sub for layer in layers for sub in freezing.layers_of(layer)
            ]
        biases = list(
            {id(v): v for v in freezing.bias_variables(layers)}.values()
        )
        if not biases:
            where = "" if config.targets is None else f" in {config.targets}"
            raise ValueError(
                f"BitFit found no bias terms{where} of "
                f"{type(context.backbone).__name__}: it would train nothing. "
                "(T5 has no biases at all; use another method.)"
            )
        return method_lib.MethodPlan(trainable_base_variables=tuple(biases))


METHOD = config_lib.register_method(BitFitMethod())
