"""How LoRA plans itself on a model."""

import keras

from keras_peft.core import composition
from keras_peft.core import config as config_lib
from keras_peft.core import freezing
from keras_peft.core import method as method_lib
from keras_peft.core import scopes
from keras_peft.core import targets as targets_lib
from keras_peft.layers.lora_dense import LoRADense
from keras_peft.lora.config import LoRAConfig

TARGET_TYPES = (keras.layers.Dense, keras.layers.EinsumDense)


class LoRAMethod(method_lib.Method):
    name = "lora"
    config_class = LoRAConfig

    def plan(self, context, config, initialize=True):
        targets = config.targets or "attn"
        if isinstance(targets, str):
            # A group: its patterns may name layers that only some configs of
            # the architecture have (T5's gate projector).
            found = targets_lib.find_targets(
                context.backbone,
                _group_patterns(context.architecture, targets),
                TARGET_TYPES,
                f"LoRA targets={targets!r}",
                require_each=False,
            )
        else:
            found = targets_lib.find_targets(
                context.backbone, targets, TARGET_TYPES, "LoRA"
            )
        composition.check_wrappable(context, config, found)

        replacements = []
        try:
            for layer in found:
                # Built inside the target's scope, the wrapper takes the
                # target's path: ".../query/lora_a" beside ".../query/kernel".
                with scopes.scope_of(layer.path):
                    wrapper = LoRADense(
                        base_layer=layer,
                        rank=config.rank,
                        alpha=config.alpha,
                        dropout=config.dropout,
                        use_rslora=config.use_rslora,
                    )
                replacements.append(method_lib.Replacement(layer, wrapper))
        except BaseException:
            for replacement in reversed(replacements):
                replacement.new.release()
            raise

        if config.bias == "all":
            kept = freezing.bias_variables(freezing.layers_of(context.backbone))
        elif config.bias == "lora_only":
            kept = freezing.bias_variables(found)
        else:
            kept = []
        if config.bias != "none" and not kept:
            for replacement in reversed(replacements):
                replacement.new.release()
            raise ValueError(
                f"LoRAConfig bias={config.bias!r} found no bias terms to "
                f"train in {type(context.backbone).__name__} (T5 has none); "
                "use bias='none'."
            )
        return method_lib.MethodPlan(tuple(replacements), tuple(kept))


def _group_patterns(architecture, group):
    if group == "all":
        return _group_patterns(architecture, "attn") + _group_patterns(
            architecture, "ffn"
        )
    key = "lora" if group == "attn" else "lora_ffn"
    return architecture.default_targets[key]


METHOD = config_lib.register_method(LoRAMethod())
