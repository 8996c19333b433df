"""Reading a learned prompt back as vocabulary tokens."""

import numpy as np

from keras_peft.core import architectures
from keras_peft.core import layer_tree
from keras_peft.core import state as state_lib
from keras_peft.layers.prompt_embedding import PromptEmbedding
from keras_peft.prompt_tuning import init as init_lib


def nearest_tokens(model, tokenizer, k=5):
    """The `k` vocabulary tokens nearest each prompt vector, by cosine.

    Lester et al. read learned prompts this way: the neighbours of each
    vector form semantic clusters, and class labels persist among them.

    Args:
        model: a model with prompt tuning applied.
        tokenizer: the model's keras-hub tokenizer (for `id_to_token`).
        k: int. Neighbours per vector. Defaults to `5`.

    Returns:
        A list with one entry per prompt vector, each the list of its `k`
        nearest tokens, nearest first. With a bank of several prompts
        (`num_prompts > 1`), a list of such lists per prompt.

    Example:
    ```python
    for position, neighbours in enumerate(
            keras_peft.nearest_tokens(classifier, tokenizer, k=3)):
        print(position, neighbours)
    ```
    """
    context = architectures.resolve_model(model)
    prompts = [
        layer
        for layer, _ in layer_tree.iter_layers(context.model)
        if isinstance(layer, PromptEmbedding)
    ]
    if not prompts:
        raise ValueError(
            f"{type(model).__name__} has no prompt: apply a "
            "`keras_peft.PromptTuningConfig` first."
        )
    if not callable(getattr(tokenizer, "id_to_token", None)):
        raise TypeError(
            "`tokenizer` must be a keras-hub tokenizer with `id_to_token`. "
            f"Got {type(tokenizer).__name__}."
        )
    embeddings = init_lib.embedding_matrix(
        context.architecture.prompt_sites(context.backbone).embeddings
    )
    if (
        not isinstance(k, int)
        or isinstance(k, bool)
        or not (1 <= k <= embeddings.shape[0])
    ):
        raise ValueError(
            f"`k` must be an int in [1, {embeddings.shape[0]}]. Got {k!r}."
        )
    # The active adapter's prompt, in a model holding several.
    prompt = prompts[0]
    names = prompt.slot_names
    state = state_lib.get_state(context.backbone)
    slot = 0
    if state and names and len(state.adapters) > 1:
        if state.active not in names:
            raise ValueError(
                f"The active adapter {state.active!r} has no prompt; the "
                f"adapters with one are {list(names)}. Activate one of "
                "them (`keras_peft.set_active`)."
            )
        slot = names.index(state.active)
    bank = np.asarray(prompt.slot_variables(slot)[0].numpy(), "float32")
    vocabulary = _unit(embeddings)
    found = []
    for prompt in bank:
        similarity = _unit(prompt) @ vocabulary.T
        nearest = np.argsort(-similarity, axis=-1, kind="stable")[:, :k]
        found.append(
            [
                [str(tokenizer.id_to_token(int(i))) for i in row]
                for row in nearest
            ]
        )
    return found[0] if len(found) == 1 else found


def _unit(vectors):
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
