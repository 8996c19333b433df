"""The supported keras-hub architectures and their per-method defaults.

This is the one table that knows about model families: which backbone class
an architecture is, and which layers each method targets by default.
"""

import dataclasses
import types

import keras
import keras_hub
import numpy as np
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.lora_dense import LoRADense
from keras_peft.layers.site_host import SiteHost


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
        sites: callable. `(backbone) -> tuple of Site`: where methods act in
            each transformer block, in order.
        prompt_sites: callable. `(backbone) -> PromptSites`: where prompt
            tuning acts.
        text_inputs: callable. `(backbone, token_ids) -> inputs`: backbone
            inputs that run a 1-D array of token ids through every attention
            layer (as encoder and as decoder input).
    """

    name: str
    backbone_class: type
    default_targets: types.MappingProxyType
    signature_keys: tuple
    sites: object
    prompt_sites: object
    text_inputs: object

    def signature(self, backbone):
        config = backbone.get_config()
        return {key: config.get(key) for key in self.signature_keys}

    def attention_layers(self, backbone):
        """`{kind: [layers]}`: the attention layers of each kind
        (`"encoder"`, `"decoder"`, `"cross"`) the backbone has, in order."""
        found = {}
        for site in self.sites(backbone):
            if site.kind != FFN:
                found.setdefault(site.attention_kind, []).append(
                    site.output_layer
                )
        return found


SELF_ATTENTION = "self_attention"
CROSS_ATTENTION = "cross_attention"
FFN = "ffn"


@dataclasses.dataclass(frozen=True)
class Site:
    """A place in a transformer block where methods act.

    A sub-layer of the block (an attention or the feed-forward network)
    reads `x`, the input of `input_layer`, and produces `h`, the (first)
    output of `output_layer`, which the block then adds to its residual
    stream. A sequential adapter maps `h`; a parallel adapter adds a
    function of `x` to `h`. For an attention, `input_layer` and
    `output_layer` are the attention layer itself (its query input).

    Args:
        name: str. Unique within the backbone, e.g. `"decoder_1/ffn"`.
        kind: str. `"self_attention"`, `"cross_attention"` or `"ffn"`.
        stack: str. `"encoder"` or `"decoder"`.
        index: int. The block's index in its stack.
        input_layer: the layer whose first input is the site's input.
        output_layer: the layer whose (first) output is the site's output.
        layer_norms: tuple of the block's layer norms that belong to the
            sub-layer (before or after it, by the architecture).
    """

    name: str
    kind: str
    stack: str
    index: int
    input_layer: object
    output_layer: object
    layer_norms: tuple = ()

    @property
    def block_path(self):
        """The path of the transformer block holding the site."""
        return self.output_layer.path.rpartition("/")[0]

    @property
    def attention_kind(self):
        """`"encoder"`, `"decoder"` or `"cross"`, as prefix tuning names
        attention layers; `None` for the FFN."""
        if self.kind == FFN:
            return None
        return "cross" if self.kind == CROSS_ATTENTION else self.stack


def _site(stack, index, kind, norm, input_layer, output_layer=None):
    return Site(
        name=f"{stack}_{index}/{kind}",
        kind=kind,
        stack=stack,
        index=index,
        input_layer=unwrapped(input_layer),
        output_layer=unwrapped(output_layer or input_layer),
        layer_norms=(norm,),
    )


@dataclasses.dataclass(frozen=True)
class Alignment:
    """How one layer keeps up with a sequence that grew by a prompt.

    Args:
        layer: the layer.
        mask_argument: name of a mask argument (last axis: the prompted
            sequence) that grows with ones for the prompt, or `None`.
        cache_argument: name of a key/value cache argument (axis 2: the
            prompted sequence) that grows with the prompt when it is being
            filled, or `None`.
        cache_index_argument: name of the argument saying the cache is being
            filled (not `None`).
        fill_output: bool. The output gains the prompt positions, holding
            copies of the position before the prompt (e.g. segment ids).
        strip_output: bool. The prompt positions are removed from the
            layer's (first) output.
    """

    layer: object
    mask_argument: str | None = None
    cache_argument: str | None = None
    cache_index_argument: str | None = None
    fill_output: bool = False
    strip_output: bool = False


@dataclasses.dataclass(frozen=True)
class PromptSites:
    """Where prompt tuning acts in a backbone.

    Args:
        insert_layer: the layer at which the prompt joins the sequence.
        where: `"output"` (inserted into the layer's output, e.g. token
            embeddings) or `"input"` (into its first input).
        graph_only: bool. Swap `insert_layer` only in the backbone's
            functional graph: other code (a tied output head) uses it too.
        mask_argument: mask argument of `insert_layer` to grow, or `None`.
        insert_at: int. Sequence position of the first prompt vector.
        aligned: tuple of `Alignment` for the layers after the insertion.
        max_length: int or `None`. The longest prompted sequence.
        embeddings: the token embedding matrix `(vocabulary, hidden_dim)`.
    """

    insert_layer: object
    where: str
    graph_only: bool
    mask_argument: str | None
    insert_at: int
    aligned: tuple
    max_length: int | None
    embeddings: object


def unwrapped(layer):
    """The layer under any keras-peft wrappers (and site hosts)."""
    while (
        isinstance(layer, (AdapterLayer, SiteHost))
        and layer.wrapped_layer is not None
    ):
        layer = layer.wrapped_layer
    return layer


def attention_projections(layer):
    """`(query_projection, output_kernel)` of a supported attention layer,
    as callables that read the layer's current projections at each call:
    `x -> per-head queries` and `() -> output kernel` (`(heads, head_dim,
    d)` for Keras' `MultiHeadAttention`, `(heads * head_dim, d)` for T5's).

    Both see the projections as the attention uses them: through LoRA when
    it wraps them (the kernel with LoRA's update unless merged into it).
    """
    layer = unwrapped(layer)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        names = ("_query_dense", "_output_dense")
    elif isinstance(layer, T5MultiHeadAttention):
        names = ("query_projector", "output_projector")
    else:
        raise TypeError(
            "Expected a keras.layers.MultiHeadAttention or keras-hub's "
            f"T5MultiHeadAttention. Received: {type(layer).__name__}"
        )
    query_name, output_name = names

    def query_projection(inputs):
        return getattr(layer, query_name)(inputs)

    def output_kernel():
        return effective_kernel(getattr(layer, output_name))

    return query_projection, output_kernel


def effective_kernel(layer):
    """The kernel a dense layer multiplies by, with LoRA's update when a
    `LoRADense` wraps it unmerged."""
    while isinstance(layer, SiteHost):
        layer = layer.base_layer
    if isinstance(layer, LoRADense) and not layer.merged:
        kernel = layer.base_layer.kernel
        return kernel + keras.ops.cast(layer.delta_kernel(), kernel.dtype)
    return unwrapped(layer).kernel


def transformer_encoder_sites(block, index=0):
    """The sites of one `keras_hub.layers.TransformerEncoder` (BERT's
    block): `encoder_<index>/self_attention` and `encoder_<index>/ffn`."""
    block = unwrapped(block)
    return (
        _site(
            "encoder",
            index,
            SELF_ATTENTION,
            block._self_attention_layer_norm,
            block._self_attention_layer,
        ),
        _site(
            "encoder",
            index,
            FFN,
            block._feedforward_layer_norm,
            block._feedforward_intermediate_dense,
            block._feedforward_output_dense,
        ),
    )


def _bert_sites(backbone):
    return tuple(
        site
        for index, block in enumerate(backbone.transformer_layers)
        for site in transformer_encoder_sites(block, index)
    )


def _bert_prompt_sites(backbone):
    layers = backbone.transformer_layers
    aligned = [Alignment(backbone.segment_embedding, fill_output=True)]
    aligned += [
        Alignment(
            layer,
            mask_argument="padding_mask",
            strip_output=index == len(layers) - 1,
        )
        for index, layer in enumerate(layers)
    ]
    return PromptSites(
        insert_layer=backbone.token_embedding,
        where="output",
        graph_only=True,
        mask_argument=None,
        # After [CLS], so pooling on position 0 still sees [CLS].
        insert_at=1,
        aligned=tuple(aligned),
        max_length=backbone.max_sequence_length,
        embeddings=backbone.token_embedding.embeddings,
    )


def _bert_text_inputs(backbone, token_ids):
    token_ids = np.asarray(token_ids, "int32")[None]
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": np.ones_like(token_ids),
    }


def _t5_sites(backbone):
    sites = []
    for stack, blocks in (
        ("encoder", backbone.encoder_transformer_layers),
        ("decoder", backbone.decoder_transformer_layers),
    ):
        for index, block in enumerate(blocks):
            block = unwrapped(block)
            sites.append(
                _site(
                    stack,
                    index,
                    SELF_ATTENTION,
                    block.self_attention_layer_norm,
                    block.self_attention,
                )
            )
            if stack == "decoder":
                sites.append(
                    _site(
                        stack,
                        index,
                        CROSS_ATTENTION,
                        block.cross_attention_layer_norm,
                        block.cross_attention,
                    )
                )
            # A gated FFN's gate projector reads the same input.
            sites.append(
                _site(
                    stack,
                    index,
                    FFN,
                    block.layer_norm,
                    block.input_projector,
                    block.output_projector,
                )
            )
    # Kind order, as prefix tuning numbers its layers: every encoder
    # self-attention, then every decoder self-attention, then every
    # cross-attention, then the FFNs.
    order = {
        ("encoder", SELF_ATTENTION): 0,
        ("decoder", SELF_ATTENTION): 1,
        ("decoder", CROSS_ATTENTION): 2,
        ("encoder", FFN): 3,
        ("decoder", FFN): 4,
    }
    return tuple(
        sorted(sites, key=lambda s: (order[(s.stack, s.kind)], s.index))
    )


def _t5_prompt_sites(backbone):
    aligned = tuple(
        Alignment(
            layer,
            mask_argument="encoder_attention_mask",
            cache_argument="cross_attention_cache",
            cache_index_argument="cross_attention_cache_update_index",
        )
        for layer in backbone.decoder_transformer_layers
    )
    return PromptSites(
        # Not the token embedding: the decoder shares it.
        insert_layer=backbone.encoder_transformer_layers[0],
        where="input",
        graph_only=False,
        mask_argument="attention_mask",
        insert_at=0,
        aligned=aligned,
        max_length=None,
        embeddings=backbone.token_embedding.embeddings,
    )


def _t5_text_inputs(backbone, token_ids):
    token_ids = np.asarray(token_ids, "int32")[None]
    ones = np.ones_like(token_ids)
    return {
        "encoder_token_ids": token_ids,
        "encoder_padding_mask": ones,
        "decoder_token_ids": token_ids,
        "decoder_padding_mask": ones,
    }


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
                "lora_ffn": (
                    "feedforward_intermediate_dense",
                    "feedforward_output_dense",
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
        sites=_bert_sites,
        prompt_sites=_bert_prompt_sites,
        text_inputs=_bert_text_inputs,
    ),
    Architecture(
        name="t5",
        backbone_class=keras_hub.models.T5Backbone,
        default_targets=types.MappingProxyType(
            {
                # Matches the projectors of encoder self-, decoder self- and
                # decoder cross-attention alike.
                "lora": ("query_projector", "value_projector"),
                # The FFN's projectors, not the attention output projector of
                # the same name: a gated FFN also has a gate projector.
                "lora_ffn": (
                    r"(.*/)?transformer_\w+_layer_\d+/input_projector",
                    r"(.*/)?transformer_\w+_layer_\d+/gate_projector",
                    r"(.*/)?transformer_\w+_layer_\d+/output_projector",
                ),
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
        sites=_t5_sites,
        prompt_sites=_t5_prompt_sites,
        text_inputs=_t5_text_inputs,
    ),
)


@dataclasses.dataclass(frozen=True)
class ModelContext:
    """What `resolve_model` found: the model, its backbone and family."""

    model: object
    backbone: object
    architecture: Architecture
    # Names of the layers planned so far in one `apply`, so that two
    # configs adding modules at one site name them apart.
    planned_names: set = dataclasses.field(
        default_factory=set, compare=False, repr=False
    )

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
