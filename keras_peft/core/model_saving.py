"""Whole-model saving: `model.save("task.keras")` of an applied model.

keras-hub rebuilds a backbone from its constructor arguments, so a saved
config says nothing of the layers keras-peft swapped in, and the weights
file then holds variables (LoRA's `A` and `B`, prompts, adapters) that the
rebuilt model has no place for. While a method is applied, the backbone's
class is therefore a registered keras-peft subclass of its keras-hub class,
with the same name (the weights file's layer paths and adapter bundles name
the class). Its `get_config` adds the applied configs, and its `from_config`
builds the keras-hub backbone and applies them again, before Keras loads
any weight. The record is plain JSON and its configs come back through
`config_from_dict`: loading runs no code, and works with `safe_mode=True`.
Removing the last method gives the backbone its keras-hub class back.

A user's own subclass of a supported backbone class cannot be rebuilt
applied from its config; while methods are applied, saving it (`.keras`,
presets) raises a `ValueError` that points to `save_adapter`.

keras-hub presets (`save_to_preset` / `from_preset`) go through the same
config. For a task preset, `Task.from_preset` looks for a registered task
class whose `backbone_cls` is the preset's backbone class; so each keras-hub
task class on a supported backbone gets a registered twin here whose
`backbone_cls` is the keras-peft backbone class.
"""

import keras
import keras_hub

from keras_peft.core import architectures
from keras_peft.core import config as config_lib
from keras_peft.core import layer_tree
from keras_peft.core import state as state_lib
from keras_peft.core import switching
from keras_peft.core import task_heads

RECORD_KEY = "keras_peft"
# Version 2 names the adapters (`adapters`, `active`); a model holding one
# adapter named "default" still writes version 1 (`configs`), which every
# keras-peft reads. Version 3 is version 2 with the slots after the first
# kept in banks (one variable per adapter variable, all slots stacked):
# the weights of a version 2 file holding several adapters do not fit.
RECORD_VERSION = 3
READABLE_RECORD_VERSIONS = (1, 2, 3)
HEADS_KEY = "keras_peft_heads"

_PEFT_CLASS = {}  # keras-hub backbone class -> its keras-peft subclass
_BASE_CLASS = {}  # keras-peft subclass -> its keras-hub backbone class


def _merged_lora_indices(backbone):
    from keras_peft.layers.lora_dense import LoRADense

    layers = [
        layer
        for layer, _ in layer_tree.iter_layers(backbone)
        if isinstance(layer, LoRADense)
    ]
    return layers, [i for i, layer in enumerate(layers) if layer.merged]


def _record(backbone):
    state = state_lib.get_state(backbone)
    _, merged = _merged_lora_indices(backbone)
    if tuple(state.adapters) == (state_lib.DEFAULT_NAME,):
        return {
            "format_version": 1,
            "configs": [config.to_dict() for config in state.configs],
            "merged_lora": merged,
        }
    return {
        "format_version": RECORD_VERSION,
        "adapters": [
            {
                "name": name,
                "configs": [config.to_dict() for config in adapter.configs],
            }
            for name, adapter in state.adapters.items()
        ],
        "active": state.active,
        "merged_lora": merged,
    }


def _named_configs(base, record):
    """`[(name, configs)]` and the active name from a record, checked."""

    def corrupted(expected):
        return ValueError(
            f"Cannot rebuild {base.__name__}: its {RECORD_KEY!r} record is "
            f"corrupted (expected {expected}): {record!r}."
        )

    def configs_of(configs):
        if (
            not isinstance(configs, list)
            or not configs
            or not all(isinstance(c, dict) for c in configs)
        ):
            raise corrupted("a non-empty list of method configs per adapter")
        return tuple(config_lib.config_from_dict(c) for c in configs)

    if record["format_version"] == 1:
        named = [(state_lib.DEFAULT_NAME, configs_of(record.get("configs")))]
        return named, state_lib.DEFAULT_NAME
    adapters = record.get("adapters")
    if not isinstance(adapters, list) or not adapters:
        raise corrupted("a non-empty list of named adapters")
    named = []
    for entry in adapters:
        if not isinstance(entry, dict) or not isinstance(
            entry.get("name"), str
        ):
            raise corrupted("each adapter with a name and configs")
        named.append((entry["name"], configs_of(entry.get("configs"))))
    active = record.get("active")
    if active not in [name for name, _ in named]:
        raise corrupted("the active adapter among the named ones")
    return named, active


def _restore(base, config):
    from keras_peft.core import injection

    config = dict(config)
    record = config.pop(RECORD_KEY, None)
    backbone = base.from_config(config)
    if record is None:
        return backbone
    if (
        not isinstance(record, dict)
        or record.get("format_version") not in READABLE_RECORD_VERSIONS
    ):
        raise ValueError(
            f"Cannot rebuild {base.__name__}: its {RECORD_KEY!r} record "
            f"{record!r} is not a keras-peft record of version "
            f"{' or '.join(map(str, READABLE_RECORD_VERSIONS))} (saved by "
            "another keras-peft version?)."
        )
    merged = record.get("merged_lora", [])
    if not isinstance(merged, list) or not all(type(i) is int for i in merged):
        raise ValueError(
            f"Cannot rebuild {base.__name__}: its {RECORD_KEY!r} record is "
            "corrupted (expected a list of merged LoRA layer indices): "
            f"{record!r}."
        )
    named, active = _named_configs(base, record)
    if record["format_version"] == 2 and len(named) > 1:
        raise ValueError(
            f"Cannot rebuild {base.__name__}: its {RECORD_KEY!r} record is "
            "of version 2, written by a keras-peft development version that "
            "kept each adapter's slot in variables of its own; this version "
            "keeps them in banks, and the file's weights do not fit. Load "
            "it with the version that wrote it and save each adapter "
            "(`keras_peft.save_adapter(model, path, name=...)`), then load "
            "them into the base model by name."
        )
    for name, configs in named:
        # The weights file supplies every value: no initialization from data.
        injection.plan(backbone, configs, initialize=False, name=name).install()
    switching.select(backbone, active)
    state = state_lib.get_state(backbone)
    state.active = active
    if state.in_place:
        # The weights file holds the trained values, not those from
        # before: unknown.
        for adapter in state.adapters.values():
            adapter.originals = None
    layers, _ = _merged_lora_indices(backbone)
    for index in merged:
        if not 0 <= index < len(layers):
            raise ValueError(
                f"Cannot rebuild {base.__name__}: merged LoRA layer {index} "
                f"of {len(layers)}."
            )
        # The saved kernel already holds the update.
        layers[index].merged = True
    return backbone


def _peft_class(base):
    def get_config(self):
        config = base.get_config(self)
        config[RECORD_KEY] = _record(self)
        return config

    def from_config(cls, config):
        return _restore(base, config)

    cls = type(
        base.__name__,
        (base,),
        {
            "__module__": __name__,
            "__doc__": f"A {base.__name__} with keras-peft methods applied.",
            "get_config": get_config,
            "from_config": classmethod(from_config),
        },
    )
    return keras.saving.register_keras_serializable(
        package="keras_peft", name=f"Peft{base.__name__}"
    )(cls)


_SUPPORTED = [a.backbone_class.__name__ for a in architectures.ARCHITECTURES]
for _architecture in architectures.ARCHITECTURES:
    _base = _architecture.backbone_class
    _PEFT_CLASS[_base] = _peft_class(_base)
    _BASE_CLASS[_PEFT_CLASS[_base]] = _base


def _keras_hub_tasks():
    """keras-hub's registered task classes, one per class."""
    found = {
        obj
        for obj in keras.saving.get_custom_objects().values()
        if isinstance(obj, type)
        and issubclass(obj, keras_hub.models.Task)
        and obj.__module__.startswith("keras_hub.")
    }
    return sorted(found, key=lambda cls: cls.__module__ + cls.__name__)


def _peft_task_class(task):
    # `Task.from_preset` looks for a registered task class whose
    # `backbone_cls` is the preset's backbone class, which for an applied
    # model is the keras-peft one. The config also names the adapters
    # whose heads the task keeps (`TaskHead`), to wrap them again.
    def get_config(self):
        config = task.get_config(self)
        names = task_heads.head_names(self)
        if names:
            config[HEADS_KEY] = list(names)
        return config

    def from_config(cls, config):
        config = dict(config)
        names = config.pop(HEADS_KEY, None)
        model = task.from_config.__func__(cls, config)
        if names is not None:
            task_heads.restore(model, names)
        return model

    cls = type(
        task.__name__,
        (task,),
        {
            "__module__": __name__,
            "__doc__": f"A {task.__name__} on a backbone with keras-peft "
            "methods applied (what `from_preset` of its preset builds).",
            "backbone_cls": _PEFT_CLASS[task.backbone_cls],
            "get_config": get_config,
            "from_config": classmethod(from_config),
        },
    )
    return keras.saving.register_keras_serializable(
        package="keras_peft", name=f"Peft{task.__name__}"
    )(cls)


for _task in _keras_hub_tasks():
    if getattr(_task, "backbone_cls", None) in _BASE_CLASS.values():
        _PEFT_CLASS[_task] = _peft_task_class(_task)
        _BASE_CLASS[_PEFT_CLASS[_task]] = _task


def _unsaveable_class(base):
    """A stand-in for a user's subclass of a supported backbone class: its
    applied methods cannot be rebuilt from its config, so saving refuses
    instead of writing a file that loads without them."""

    def get_config(self):
        raise ValueError(
            f"Cannot save {base.__name__} {self.name!r} with keras-peft "
            "methods applied: only keras-hub's own backbone classes "
            f"({', '.join(_SUPPORTED)}) carry their methods "
            "into a `.keras` file or a preset, not subclasses of them. Save "
            "the methods with `keras_peft.save_adapter` instead, or remove "
            "them first."
        )

    cls = type(
        base.__name__,
        (base,),
        {"__module__": base.__module__, "get_config": get_config},
    )
    _PEFT_CLASS[base] = cls
    _BASE_CLASS[cls] = base
    return cls


def track(backbone, model=None):
    """Gives `backbone` (and `model`, a task around it) the classes that save
    what is applied, or their keras-hub classes back when nothing is;
    called whenever the record of what is applied changes.

    Args:
        backbone: the backbone whose applied state changed.
        model: optional. The task the methods were applied through.
    """
    applied = state_lib.get_state(backbone) is not None
    for layer in (backbone, model):
        if layer is None:
            continue
        base = _BASE_CLASS.get(type(layer), type(layer))
        if base not in _PEFT_CLASS:
            if layer is not backbone:
                continue  # a task class keras-hub does not register
            _unsaveable_class(base)
        layer.__class__ = _PEFT_CLASS[base] if applied else base
