"""The MAM adapter config: a union of prefix tuning and a parallel adapter."""

import dataclasses
import typing

from keras_peft.adapters.config import AdapterConfig
from keras_peft.core import config as config_lib
from keras_peft.prefix_tuning.config import PrefixTuningConfig

_FIELD_NAMES = (
    ("PrefixTuningConfig `length`", "MAMConfig `prefix_length`"),
    ("PrefixTuningConfig `", "MAMConfig `"),
    ("AdapterConfig `", "MAMConfig `"),
)


@config_lib.register_union
@dataclasses.dataclass(frozen=True)
class MAMConfig(config_lib.UnionConfig):
    """He et al.'s "mix-and-match" adapter: prefix tuning at every attention
    and a scaled parallel adapter at every FFN.

    A union of two configs, and stored as that union: `keras_peft.apply`
    applies `parts()`, a `PrefixTuningConfig` and an `AdapterConfig`, which
    are what `keras_peft.applied_configs` and adapter files then hold (so
    `keras_peft.eject_prefix` and everything else that works on the parts
    works on MAM).

    Args:
        prefix_length: int. Prefix length `l` at every attention. Defaults
            to `30`.
        bottleneck: int. Width `r` of the FFN parallel adapters. Defaults
            to `512`.
        scale: float > 0 or `"learned"`. The parallel adapters' scale `s`.
            Defaults to `4.0`.
        reparam: bool. Train the prefix through an MLP, as prefix tuning
            does (`keras_peft.eject_prefix` drops it after training).
            Defaults to `True`.
        reparam_hidden: int. Width of the prefix MLP. Defaults to `512`.
        activation: str. The parallel adapters' activation. Defaults to
            `"relu"`.

    Example:
    ```python
    keras_peft.apply(seq2seq_lm, keras_peft.MAMConfig(bottleneck=512))
    ...  # fit
    keras_peft.eject_prefix(seq2seq_lm)
    ```

    Reference:
        - [He et al., 2022](https://arxiv.org/abs/2110.04366)
    """

    method: typing.ClassVar[str] = "mam"
    foreign_names: typing.ClassVar[dict] = {
        "reduction_factor": "give the adapter's width directly as "
        "`bottleneck` (hidden size / reduction factor)",
        "prefix_projection": "keras-peft calls it `reparam`",
        "encoder_hidden_size": "keras-peft calls it `reparam_hidden`",
        "scaling": "keras-peft calls it `scale`",
        "num_virtual_tokens": "keras-peft calls it `prefix_length`",
    }

    prefix_length: int = 30
    bottleneck: int = 512
    scale: float | str = 4.0
    reparam: bool = True
    reparam_hidden: int = 512
    activation: str = "relu"

    def __post_init__(self):
        # The parts validate every field; their messages are reworded to
        # name this config's fields.
        try:
            self.parts()
        except ValueError as error:
            message = str(error)
            for part_field, field in _FIELD_NAMES:
                message = message.replace(part_field, field)
            raise ValueError(message) from None

    def parts(self):
        return (
            PrefixTuningConfig(
                length=self.prefix_length,
                reparam=self.reparam,
                reparam_hidden=self.reparam_hidden,
            ),
            AdapterConfig(
                bottleneck=self.bottleneck,
                location="ffn",
                parallel=True,
                scale=self.scale,
                activation=self.activation,
            ),
        )
