"""The BitFit config."""

import dataclasses
import typing

from keras_peft.core import config as config_lib
from keras_peft.core import targets as targets_lib


@dataclasses.dataclass(frozen=True)
class BitFitConfig(config_lib.PeftConfig):
    """Trains the backbone's bias terms and nothing else of it.

    Every bias of the backbone's dense and attention projections and every
    layer-norm offset trains; the task head trains as always. No layer is
    added, so the model runs exactly as before. A backbone without bias terms
    (T5) is an error rather than a method that trains nothing.

    Args:
        targets: `None` or list of str. Patterns matched against
            `layer.path` (the path, a trailing part such as `"query"`, or a
            full regular expression): only the biases of matching layers
            (and of their sub-layers) train. Defaults to `None` (every bias
            of the backbone).

    Example:
    ```python
    keras_peft.apply(classifier, keras_peft.BitFitConfig())
    print(keras_peft.trainable_summary(classifier))  # bitfit + head
    ```

    Reference:
        - [Ben Zaken et al., 2021](https://arxiv.org/abs/2106.10199)
    """

    method: typing.ClassVar[str] = "bitfit"

    targets: tuple | None = None

    def __post_init__(self):
        object.__setattr__(
            self,
            "targets",
            targets_lib.validate_patterns(self.targets, "BitFitConfig"),
        )
