"""The adapter config."""

import dataclasses
import typing

from keras_peft.core import config as config_lib
from keras_peft.core import targets as targets_lib
from keras_peft.layers import bottleneck as bottleneck_lib
from keras_peft.layers.validation import check_int

LOCATIONS = ("ffn", "attn", "both")
# Each style: (location, parallel), as in its paper.
STYLES = {"houlsby": ("both", False), "pfeiffer": ("ffn", False)}


@dataclasses.dataclass(frozen=True)
class AdapterConfig(config_lib.PeftConfig):
    """Bottleneck adapters at the attention and/or FFN of every block.

    Sequential (`parallel=False`, Houlsby et al. 2019): the sub-layer's
    output becomes `h + s * f(h W_down) W_up` (a `keras_peft.layers.Adapter`),
    before the residual add and layer norm. Parallel (`parallel=True`, He et
    al. 2022): `h + s * f(x W_down) W_up` from the sub-layer's input `x` (a
    `keras_peft.layers.ParallelAdapter`); `scale=4.0` is their scaled
    parallel adapter. Up-projections start at zero: the model computes
    exactly what it did until it trains.

    Args:
        bottleneck: int. Width `r` of each adapter. Defaults to `64`.
        location: str. `"ffn"`, `"attn"` (every self- and cross-attention)
            or `"both"`. Defaults to `"ffn"`.
        parallel: bool. Parallel instead of sequential adapters. Defaults to
            `False`.
        scale: float > 0, or `"learned"` (a trainable scalar per adapter,
            starting at 1.0). Defaults to `1.0`.
        activation: str. Name of a Keras activation. Defaults to `"relu"`.
        multi_head: bool. A parallel adapter per attention head, added to
            the head outputs before the attention's output projection
            (`keras_peft.layers.MultiHeadParallelAdapter`; `bottleneck` is
            then each head's width). Needs `parallel=True` and
            `location="attn"`. Defaults to `False`.
        style: `None`, `"houlsby"` (sequential, attention and FFN; the
            blocks' layer norms train too, as in the paper) or `"pfeiffer"`
            (sequential, FFN only). A style sets `location` and `parallel`:
            `location` may stay at its default `"ffn"` (Houlsby widens it
            to `"both"`); `parallel=True`, or a location the style does not
            use, is an error. Defaults to `None`.
        targets: `None` or list of str. Patterns matched against site names
            such as `"encoder_0/ffn"` or `"decoder_1/cross_attention"`
            (the name itself, a trailing part, or a full regular
            expression), among the sites `location` selects. Defaults to
            `None` (every such site).

    Example:
    ```python
    config = keras_peft.AdapterConfig(bottleneck=64, parallel=True, scale=4.0)
    keras_peft.apply(classifier, config)  # scaled parallel adapter, FFN
    ```

    Reference:
        - [Houlsby et al., 2019](https://arxiv.org/abs/1902.00751)
        - [He et al., 2022](https://arxiv.org/abs/2110.04366)
    """

    method: typing.ClassVar[str] = "adapter"
    foreign_names: typing.ClassVar[dict] = {
        "reduction_factor": "give the width directly as `bottleneck` "
        "(hidden size / reduction factor)",
        "non_linearity": "keras-peft calls it `activation`",
        "is_parallel": "keras-peft calls it `parallel`",
        "scaling": "keras-peft calls it `scale`",
        "mh_adapter": 'keras-peft says where with `location` ("attn", '
        '"ffn" or "both")',
        "output_adapter": 'keras-peft says where with `location` ("attn", '
        '"ffn" or "both")',
    }

    bottleneck: int = 64
    location: str = "ffn"
    parallel: bool = False
    scale: float | str = 1.0
    activation: str = "relu"
    multi_head: bool = False
    style: str | None = None
    targets: tuple | None = None

    def __post_init__(self):
        check_int("bottleneck", self.bottleneck, owner="AdapterConfig ")
        if self.location not in LOCATIONS:
            raise ValueError(
                f"AdapterConfig `location` must be one of {LOCATIONS}. "
                f"Got {self.location!r}."
            )
        if not isinstance(self.parallel, bool):
            raise ValueError(
                "AdapterConfig `parallel` must be a bool. "
                f"Got {self.parallel!r}."
            )
        bottleneck_lib.check_scale(self.scale, owner="AdapterConfig ")
        if self.scale != bottleneck_lib.LEARNED:
            object.__setattr__(self, "scale", float(self.scale))
        if not isinstance(self.activation, str):
            raise ValueError(
                "AdapterConfig `activation` must be the name of a Keras "
                f"activation (a str, so that it can be saved). Got "
                f"{self.activation!r}."
            )
        bottleneck_lib.get_activation(self.activation, owner="AdapterConfig ")
        if not isinstance(self.multi_head, bool):
            raise ValueError(
                "AdapterConfig `multi_head` must be a bool. "
                f"Got {self.multi_head!r}."
            )
        if self.multi_head and (not self.parallel or self.location != "attn"):
            raise ValueError(
                "AdapterConfig multi_head=True is a parallel adapter per "
                "attention head: it needs parallel=True and "
                f"location='attn' (got parallel={self.parallel}, "
                f"location={self.location!r}); the FFN has no heads."
            )
        if self.style is not None:
            if self.style not in STYLES:
                raise ValueError(
                    f"AdapterConfig `style` must be None or one of "
                    f"{tuple(STYLES)}. Got {self.style!r}."
                )
            location, parallel = STYLES[self.style]
            # "ffn" is the default location: a style may widen it.
            if self.parallel != parallel or self.location not in (
                location,
                "ffn",
            ):
                raise ValueError(
                    f"AdapterConfig style={self.style!r} means "
                    f"location={location!r}, parallel={parallel}; got "
                    f"location={self.location!r}, parallel={self.parallel}."
                )
            object.__setattr__(self, "location", location)
        object.__setattr__(
            self,
            "targets",
            targets_lib.validate_patterns(self.targets, "AdapterConfig"),
        )
