"""The LoRA config."""

import dataclasses
import typing

from keras_peft.core import config as config_lib
from keras_peft.core import targets as targets_lib
from keras_peft.layers import lora_dense

BIAS_MODES = ("none", "all", "lora_only")
# Named groups of targets, from the architecture's table.
TARGET_GROUPS = ("attn", "ffn", "all")


@dataclasses.dataclass(frozen=True)
class LoRAConfig(config_lib.PeftConfig):
    """Low-rank adaptation of dense projections.

    Each targeted `Dense`/`EinsumDense` becomes a `keras_peft.layers.LoRADense`
    computing `h = base(x) + (alpha / rank) * dropout(x) @ A @ B`.

    Args:
        rank: int. Rank `r` of the update. Defaults to `8`.
        alpha: float. The update is scaled by `alpha / rank`. Defaults to
            `16.0`.
        dropout: float. Dropout on the update's input, in `[0, 1)`. Defaults
            to `0.0`.
        targets: `None`, a target group, or list of str. Patterns are
            matched against `layer.path` (the path itself, a trailing part
            such as `"query"`, or a full regular expression). A group names
            the architecture's layers: `"attn"` (BERT's query and value
            projections; T5's query and value projectors of encoder self-,
            decoder self- and cross-attention), `"ffn"` (every projection
            of every feed-forward network) or `"all"` (both). `None` means
            `"attn"`. Defaults to `None`.
        bias: str. Which base biases train: `"none"`, `"all"` (every bias
            and layer-norm offset of the backbone) or `"lora_only"` (biases
            of the targeted layers). Defaults to `"none"`.
        use_rslora: bool. Scale by `alpha / sqrt(rank)`. Defaults to `False`.

    Example:
    ```python
    config = keras_peft.LoRAConfig(rank=8, alpha=16, targets=["query", "value"])
    keras_peft.apply(classifier, config)
    ```

    Reference:
        - [Hu et al., 2021](https://arxiv.org/abs/2106.09685)
    """

    method: typing.ClassVar[str] = "lora"
    foreign_names: typing.ClassVar[dict] = {
        "r": "keras-peft calls the rank `rank`",
        "lora_alpha": "keras-peft calls it `alpha`",
        "lora_dropout": "keras-peft calls it `dropout`",
        "target_modules": "keras-peft calls it `targets` (layer path "
        'patterns, or "attn", "ffn", "all")',
        "fan_in_fan_out": "not needed: keras-peft reads each layer's kernel "
        "layout itself",
        "init_lora_weights": "keras-peft always starts `B` at zero, so an "
        "applied model computes what the base did",
        "use_dora": "DoRA is not implemented in keras-peft",
        "layers_to_transform": "choose layers with `targets` patterns "
        "(regular expressions over layer paths)",
        "layers_pattern": "choose layers with `targets` patterns (regular "
        "expressions over layer paths)",
        "rank_pattern": "keras-peft has one `rank` per config",
        "alpha_pattern": "keras-peft has one `alpha` per config",
    }

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple | str | None = None
    bias: str = "none"
    use_rslora: bool = False

    def __post_init__(self):
        lora_dense._validate_hyperparameters(
            self.rank, self.alpha, self.dropout
        )
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.targets not in TARGET_GROUPS:
            object.__setattr__(
                self,
                "targets",
                targets_lib.validate_patterns(self.targets, "LoRAConfig"),
            )
        if self.bias not in BIAS_MODES:
            raise ValueError(
                f"LoRAConfig `bias` must be one of {BIAS_MODES}. "
                f"Got {self.bias!r}."
            )
        if not isinstance(self.use_rslora, bool):
            raise ValueError(
                "LoRAConfig `use_rslora` must be a bool. "
                f"Got {self.use_rslora!r}."
            )
