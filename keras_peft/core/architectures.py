"""The supported keras-hub architectures and their per-method defaults.

This is the one table that knows about model families: which backbone class
an architecture is, and which layers each method targets by default.
"""

import dataclasses
import types

import keras_hub


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A supported backbone family.

    Args:
        name: str. Short name stored in adapter files, e.g. `"bert"`.
        backbone_class: type. The keras-hub backbone class.
        default_targets: mapping. Method name to the tuple of layer-path
            patterns that method targets when its config says `targets=None`.
        signature_keys: tuple of str. Backbone config keys that determine the
            shapes of adapter weights; stored in adapter files and compared on
            load.
    """

    name: str
    backbone_class: type
    default_targets: types.MappingProxyType
    signature_keys: tuple

    def signature(self, backbone):
        config = backbone.get_config()
        return {key: config.get(key) for key in self.signature_keys}


ARCHITECTURES = (
    Architecture(
        name="bert",
        backbone_class=keras_hub.models.BertBackbone,
        default_targets=types.MappingProxyType(
            {
                "lora": (
                    "self_attention_layer/query",
                    "self_attention_layer/value",
                ),
            }
        ),
        signature_keys=(
            "vocabulary_size",
            "num_layers",
            "num_heads",
            "hidden_dim",
            "intermediate_dim",
            "max_sequence_length",
            "num_segments",
        ),
    ),
    Architecture(
        name="t5",
        backbone_class=keras_hub.models.T5Backbone,
        default_targets=types.MappingProxyType(
            {
                # Matches the projectors of encoder self-, decoder self- and
                # decoder cross-attention alike.
                "lora": ("query_projector", "value_projector"),
            }
        ),
        signature_keys=(
            "vocabulary_size",
            "num_layers",
            "num_heads",
            "hidden_dim",
            "intermediate_dim",
            "key_value_dim",
            "use_gated_activation",
            "tie_embedding_weights",
        ),
    ),
)


@dataclasses.dataclass(frozen=True)
class ModelContext:
    """What `resolve_model` found: the model, its backbone and family."""

    model: object
    backbone: object
    architecture: Architecture

    @property
    def is_task(self):
        return self.model is not self.backbone


def _supported_names():
    return ", ".join(a.backbone_class.__name__ for a in ARCHITECTURES)


def architecture_of_backbone(backbone):
    for architecture in ARCHITECTURES:
        if isinstance(backbone, architecture.backbone_class):
            return architecture
    return None


def resolve_model(model):
    """Finds the backbone and architecture of a backbone or task model.

    Args:
        model: a keras-hub backbone of a supported family, or a task (such as
            `BertTextClassifier` or `T5Seq2SeqLM`) whose `backbone` is one.

    Returns:
        A `ModelContext`.
    """
    architecture = architecture_of_backbone(model)
    if architecture is not None:
        return ModelContext(model, model, architecture)
    backbone = getattr(model, "backbone", None)
    architecture = architecture_of_backbone(backbone)
    if architecture is not None:
        return ModelContext(model, backbone, architecture)
    raise ValueError(
        f"Unsupported model type {type(model).__name__}. keras-peft supports "
        f"the keras-hub backbones {_supported_names()} and tasks that hold "
        "one as `backbone` (e.g. BertTextClassifier, BertMaskedLM, "
        "T5Seq2SeqLM)."
    )
