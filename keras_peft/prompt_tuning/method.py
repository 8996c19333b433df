"""How prompt tuning plans itself on a model."""

from keras_peft.core import architectures
from keras_peft.core import composition
from keras_peft.core import config as config_lib
from keras_peft.core import method as method_lib
from keras_peft.core import scopes
from keras_peft.core import state as state_lib
from keras_peft.core import tokens
from keras_peft.layers.prompt_embedding import PromptEmbedding
from keras_peft.layers.prompt_sites import PromptAlignment
from keras_peft.layers.prompt_sites import PromptInsertion
from keras_peft.prompt_tuning import init as init_lib
from keras_peft.prompt_tuning.config import PromptTuningConfig


class PromptTuningMethod(method_lib.Method):
    name = "prompt_tuning"
    config_class = PromptTuningConfig

    def plan(self, context, config, initialize=True):
        state = state_lib.get_state(context.backbone)
        # Beside other named adapters, each adapter has its prompt: the
        # layers it shares say whether this one has one already.
        if (
            composition.shared_name() is None
            and state
            and any(c.method == self.name for c in state.configs)
        ):
            raise ValueError(
                "The model already has prompt tuning applied; a model takes "
                "one prompt."
            )
        sites = context.architecture.prompt_sites(context.backbone)
        _check_length(context, sites, config.length)
        graph_of = context.backbone if sites.graph_only else None
        composition.check_wrappable(
            context, config, [sites.insert_layer], graph_of
        )
        composition.check_wrappable(
            context, config, [a.layer for a in sites.aligned]
        )

        values = None
        if initialize:
            tokenizer = tokens.resolve_tokenizer(context, config.tokenizer)
            values = init_lib.initial_prompt(
                config, init_lib.embedding_matrix(sites.embeddings), tokenizer
            )

        # Under the wrappers of another named adapter's prompt, if any.
        insert = architectures.unwrapped(sites.insert_layer)
        with scopes.scope_of(f"{insert.path}/prompt_embedding"):
            prompt = PromptEmbedding(
                config.length,
                insert_at=sites.insert_at,
                name="prompt_embedding",
                dtype=insert.dtype_policy,
            )
            prompt.build((None, None, sites.embeddings.shape[-1]))
        if values is not None:
            prompt.prompt.assign(values[None].astype("float32"))
        with scopes.scope_of(insert.path):
            inserted = PromptInsertion(
                insert,
                prompt,
                where=sites.where,
                mask_argument=sites.mask_argument,
                max_length=sites.max_length,
            )
        replacements = [method_lib.Replacement(insert, inserted, graph_of)]
        for alignment in sites.aligned:
            layer = architectures.unwrapped(alignment.layer)
            with scopes.scope_of(layer.path):
                wrapper = PromptAlignment(
                    layer,
                    config.length,
                    insert_at=sites.insert_at,
                    mask_argument=alignment.mask_argument,
                    cache_argument=alignment.cache_argument,
                    cache_index_argument=alignment.cache_index_argument,
                    fill_output=alignment.fill_output,
                    strip_output=alignment.strip_output,
                )
            replacements.append(method_lib.Replacement(layer, wrapper))
        return method_lib.MethodPlan(tuple(replacements))


def _check_length(context, sites, length):
    if sites.max_length is None:
        return
    if length >= sites.max_length:
        raise ValueError(
            f"A prompt of length {length} leaves no room for inputs: "
            f"{type(context.backbone).__name__} takes at most "
            f"{sites.max_length} positions."
        )
    preprocessor = getattr(context.model, "preprocessor", None)
    sequence_length = getattr(preprocessor, "sequence_length", None)
    if sequence_length is not None and sequence_length + length > (
        sites.max_length
    ):
        raise ValueError(
            f"The preprocessor makes inputs of length {sequence_length}, "
            f"which do not fit with a prompt of length {length}: the model "
            f"takes at most {sites.max_length} positions. Set the "
            "preprocessor's `sequence_length` to at most "
            f"{sites.max_length - length}."
        )


METHOD = config_lib.register_method(PromptTuningMethod())
