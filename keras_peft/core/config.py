"""The base of every method config, and the registry of methods."""

import dataclasses
import json
import typing

_METHODS = {}
_UNIONS = {}


def register_method(method):
    """Registers a method under `method.name`.

    Args:
        method: object. A `keras_peft.core.method.Method` instance, whose
            `config_class` is the frozen dataclass of its config.
    """
    if method.name in _METHODS or method.name in _UNIONS:
        raise ValueError(f"Method {method.name!r} is already registered.")
    _METHODS[method.name] = method
    return method


def register_union(config_class):
    """Registers a `UnionConfig` subclass under its `method` name, so that
    `config_from_dict` reads it back."""
    if config_class.method in _METHODS or config_class.method in _UNIONS:
        raise ValueError(f"{config_class.method!r} is already registered.")
    _UNIONS[config_class.method] = config_class
    return config_class


def get_method(name):
    """Returns the registered method called `name`."""
    if name in _UNIONS:
        raise ValueError(
            f"{name!r} is a union of other methods' configs "
            f"({_UNIONS[name].__name__}), not a method of its own: pass the "
            "config to `keras_peft.apply`, which applies its parts."
        )
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown keras-peft method {name!r}. "
            f"Known methods: {sorted(_METHODS)}; union configs: "
            f"{sorted(_UNIONS)}."
        ) from None


def method_of(config):
    """Returns the registered method of a config instance."""
    if not isinstance(config, PeftConfig):
        raise TypeError(
            "Expected a keras-peft config such as `keras_peft.LoRAConfig`. "
            f"Received: {config!r} of type {type(config).__name__}."
        )
    return get_method(config.method)


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    """Base class of the frozen, JSON-serializable method configs.

    Subclasses set the class variable `method` to their registered method
    name and validate their fields in `__post_init__`.
    """

    method: typing.ClassVar[str] = ""
    # Keyword names other libraries use for a field of this config (HF
    # PEFT's, AdapterHub's), each with what to write here instead.
    foreign_names: typing.ClassVar[dict] = {}

    def __new__(cls, *args, **kwargs):
        # Runs before the dataclass `__init__`, whose bare "unexpected
        # keyword argument" would not say what the name is called here.
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = [name for name in kwargs if name not in names]
        if unknown:
            raise TypeError(_unknown_keywords_message(cls, unknown, names))
        return super().__new__(cls)

    def to_dict(self):
        """Returns a JSON-compatible dict that includes the method name."""
        data = {"method": self.method}
        for field in _stored_fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = list(value)
            data[field.name] = value
        return data

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data):
        """Builds a config from `to_dict()` output, rejecting unknown keys."""
        if not isinstance(data, dict):
            raise ValueError(
                f"A {cls.__name__} must be read from a dict. Received: {data!r}"
            )
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(
                f"Cannot read a {cls.__name__} from a config of method "
                f"{method!r}; expected method {cls.method!r}."
            )
        names = {field.name for field in _stored_fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} fields {unknown}. "
                f"Allowed fields: {sorted(names)}."
            )
        return cls(**data)

    def differences(self, other):
        """`(field, self value, other value)` for each field that differs."""
        if type(other) is not type(self):
            return [("method", self.method, other.method)]
        return [
            (field.name, getattr(self, field.name), getattr(other, field.name))
            for field in _stored_fields(self)
            if getattr(self, field.name) != getattr(other, field.name)
        ]


@dataclasses.dataclass(frozen=True)
class UnionConfig(PeftConfig):
    """A config that is a union of other configs (AdapterHub's composites).

    `keras_peft.apply` applies its `parts()` in order, as if they were
    listed one by one, and records the parts, not the union: a union adds
    no method of its own.
    """

    def parts(self):
        """The configs this one stands for, in the order they apply."""
        raise NotImplementedError


# Keywords HF PEFT configs take that no keras-peft config needs.
_NOT_NEEDED = {
    "task_type": "keras-peft reads the task from the model you pass to "
    "`keras_peft.apply`",
    "base_model_name_or_path": "the adapter file records the model's "
    "architecture and shapes",
    "inference_mode": "freezing is `apply`'s job; to serve, load the "
    "adapter (and `keras_peft.merge_lora` for LoRA)",
    "modules_to_save": "a task's head (outside the backbone) trains and is "
    "saved with the adapter by default",
    "revision": "keras-peft configs are not downloaded",
    # HF PEFT's prompt-learning configs restate the model's shape.
    "num_layers": "keras-peft reads the model's shape from the model",
    "token_dim": "keras-peft reads the model's shape from the model",
    "num_attention_heads": "keras-peft reads the model's shape from the model",
    "num_transformer_submodules": "keras-peft reads the model's shape from "
    "the model",
}


def _unknown_keywords_message(cls, unknown, names):
    hints = []
    for name in unknown:
        if name in cls.foreign_names:
            hints.append(f"`{name}`: {cls.foreign_names[name]}")
        elif name in _NOT_NEEDED:
            hints.append(f"`{name}` is not needed: {_NOT_NEEDED[name]}")
    message = (
        f"{cls.__name__} got unexpected keyword arguments {unknown}. "
        f"Its arguments are {sorted(names)}."
    )
    if hints:
        message += " " + "; ".join(hints) + "."
    return message


def runtime_field(default=None):
    """A config field that is used while applying but not stored or compared.

    For objects such as a tokenizer: they help initialize new weights, but
    are not part of what an adapter file records.
    """
    return dataclasses.field(
        default=default, compare=False, repr=False, metadata={"stored": False}
    )


def _stored_fields(config):
    return [
        field
        for field in dataclasses.fields(config)
        if field.metadata.get("stored", True)
    ]


def config_from_dict(data):
    """Builds the config of any registered method from its `to_dict()`."""
    if not isinstance(data, dict) or "method" not in data:
        raise ValueError(
            f"A keras-peft config dict needs a 'method' key. Received: {data!r}"
        )
    if data["method"] in _UNIONS:
        return _UNIONS[data["method"]].from_dict(data)
    return get_method(data["method"]).config_class.from_dict(data)


def describe(config):
    """`repr(config)`, naming the union config it is a part of, if any."""
    union = getattr(config, "_union", None)
    if union is None:
        return repr(config)
    return f"{union!r} (its {type(config).__name__} part)"


def normalize_configs(configs):
    """Turns one config or a sequence of them into a validated tuple, each
    union config replaced by its parts."""
    if isinstance(configs, PeftConfig):
        configs = (configs,)
    if not isinstance(configs, (list, tuple)) or not configs:
        raise TypeError(
            "Expected a keras-peft config or a non-empty list of them. "
            f"Received: {configs!r}"
        )
    expanded = []
    for config in configs:
        if isinstance(config, UnionConfig):
            parts = normalize_configs(config.parts())
            for part in parts:
                # Not a field: equality, repr and files stay the part's own.
                object.__setattr__(part, "_union", config)
            expanded.extend(parts)
            continue
        method_of(config)
        expanded.append(config)
    return tuple(expanded)
