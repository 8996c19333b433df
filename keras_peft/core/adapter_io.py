"""Adapter-only bundles: a JSON config plus the weights that train."""

import hashlib
import json
import os
import re
import zipfile

import keras
import numpy as np
import safetensors
import safetensors.numpy

from keras_peft.core import architectures
from keras_peft.core import config as config_lib
from keras_peft.core import injection
from keras_peft.core import layer_tree
from keras_peft.core import state as state_lib
from keras_peft.core import surgery
from keras_peft.core import switching
from keras_peft.core.atomic_dir import atomic_directory
from keras_peft.prefix_tuning import eject
from keras_peft.version import __version__

FORMAT = "keras-peft-adapter"
# Version 2: safetensors weights, variables matched by address. Version 1
# (NumPy `.npz`, variables matched by position) is still read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_weights.safetensors"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalized(path):
    """A variable path with Keras' automatic `_N` name suffixes removed.

    Auto-named layers (T5's layer norms, for example) get a process-wide
    counter in their name, so two instances of one model differ there.
    """
    return re.sub(r"_\d+(?=/|$)", "", path)


def _paths_correspond(saved, current):
    """Whether a saved variable path names the model's variable.

    Equal up to automatic `_N` suffixes, or equal after dropping the outer
    name scopes one of the two models was built in.
    """
    saved, current = _normalized(saved), _normalized(current)
    return (
        saved == current
        or saved.endswith("/" + current)
        or current.endswith("/" + saved)
    )


def _may_replace(path):
    if not os.path.isdir(path):
        raise ValueError(
            f"Cannot save an adapter to {path!r}: it exists and is not a "
            "directory."
        )
    if os.listdir(path) and not os.path.exists(os.path.join(path, CONFIG_FILE)):
        raise ValueError(
            f"Cannot save an adapter to {path!r}: it is a non-empty "
            "directory that does not hold a keras-peft adapter."
        )
    return True


def save_adapter(model, path, keep_prefix_mlp=False, name=None):
    """Saves only what trains: adapter weights, trainable head, JSON config.

    Writes a directory with `adapter_config.json` (the method configs, the
    architecture and the list of variables, each with its address in the
    model) and `adapter_weights.safetensors` (plain tensors, readable on any
    backend or without Keras). The write is atomic: the directory is either
    the old one or the complete new one, never half-written. A directory
    holding an older adapter is replaced; any other existing path is
    refused.

    A prefix trained through its reparametrization MLP
    (`PrefixTuningConfig(reparam=True)`, the default, and `MAMConfig`) is
    saved as the prefix the MLP computes, `2 * length * hidden` values per
    attention layer: the file of Li & Liang's paper, a small fraction of
    the MLP's size. The bundle then holds the config with `reparam=False`
    and loads into a fresh model as a directly trained prefix, giving the
    same outputs (under a mixed precision policy, to the rounding of the
    compute dtype: the prefix is computed and stored in float32); the model
    saved from is left as it was. Pass
    `keep_prefix_mlp=True` to store the MLP and `P'` instead, to train
    further through the MLP after loading. `adapter_config.json`'s
    `"prefix"` entry says which a bundle holds: `"computed"` (the MLP's
    output), `"mlp"` (the MLP and `P'`) or `"direct"` (a prefix trained
    without an MLP, or after `eject_prefix`).

    In a model holding several named adapters, one adapter is saved (with
    its own head), exactly as a model holding only it would save it; the
    bundle loads under any name.

    Args:
        model: a model keras-peft methods were applied to.
        path: str. The directory to write.
        keep_prefix_mlp: bool. Store a reparametrized prefix's MLP instead
            of the prefix it computes. Defaults to `False`.
        name: str or `None`. The adapter to save; defaults to the active
            one.

    Example:
    ```python
    keras_peft.save_adapter(classifier, "adapters/sst2")
    keras_peft.save_adapter(seq2seq_lm, "adapters/e2e-ckpt",
                            keep_prefix_mlp=True)  # to resume training
    ```
    """
    if not isinstance(keep_prefix_mlp, bool):
        raise TypeError(
            f"`keep_prefix_mlp` must be True or False. Received: "
            f"{keep_prefix_mlp!r}"
        )
    context = architectures.resolve_model(model)
    state = state_lib.get_state(context.backbone)
    if state is None:
        raise ValueError(
            f"{type(model).__name__} has no keras-peft adapter applied; "
            "call `keras_peft.apply` first."
        )
    name = state.active if name is None else switching.check_name(name)
    if name not in state.adapters:
        raise ValueError(
            f"Cannot save adapter {name!r}: {type(model).__name__} holds "
            f"the adapters {list(state.adapters)}."
        )
    configs = state.adapters[name].configs
    computed = (
        []
        if keep_prefix_mlp
        else [
            layer
            for layer in eject.trained_reparametrized_prefixes(context.model)
            if not layer.slot_names or name in layer.slot_names
        ]
    )
    if computed:
        configs = eject.ejected_configs(configs)
    arrays, entries = {}, []
    for address, variable_path, dtype, value in _saved_variables(
        context.model, computed, name
    ):
        key = f"v{len(entries):04d}"
        arrays[key] = value
        entries.append(
            {
                "key": key,
                "address": address,
                "path": variable_path,
                "shape": list(value.shape),
                "dtype": dtype,
            }
        )
    with atomic_directory(path, _may_replace) as tmp:
        weights_path = os.path.join(tmp, WEIGHTS_FILE)
        with open(weights_path, "wb") as f:
            f.write(safetensors.numpy.save(arrays))
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "keras_peft_version": __version__,
            "architecture": context.architecture.name,
            "backbone_class": type(context.backbone).__name__,
            "model_class": type(context.model).__name__,
            "backbone_signature": context.architecture.signature(
                context.backbone
            ),
            "configs": [config.to_dict() for config in configs],
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": _sha256(weights_path),
            "variables": entries,
            "adapter_name": name,
        }
        prefix = _prefix_storage(state.adapters[name].configs, computed)
        if prefix is not None:
            document["prefix"] = prefix
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(document, f, indent=2, sort_keys=True)
            f.write("\n")


def _prefix_storage(configs, computed):
    """How a bundle holds its prefix, for the reader of its config file."""
    prefixes = [c for c in configs if c.method == "prefix_tuning"]
    if not prefixes:
        return None
    if computed:
        return "computed"
    if any(c.reparam for c in prefixes):
        return "mlp"
    return "direct"


def _saved_variables(model, computed, name):
    """Yields `(address, path, dtype, array)` for each variable to save.

    Adapter `name`'s trainable variables (`switching.named_variables`),
    except that the prefix MLPs feeding the `PrefixAttention` layers in
    `computed` are replaced by the prefix each layer gets from them, at the
    address `eject_prefix` would give it.
    """
    dropped = {
        id(variable)
        for layer in computed
        for variable in layer.prefix_source.weights
    }
    for address, variable in switching.named_variables(model, name):
        # A slot kept in a bank's row: the bank's.
        if id(getattr(variable, "bank", variable)) not in dropped:
            yield (
                address,
                variable.path,
                str(variable.dtype),
                _to_numpy(variable),
            )
    layer_addresses = (
        switching.alone_layer_addresses(model, name) if computed else {}
    )
    for layer in computed:
        dtype = keras.backend.standardize_dtype(layer.variable_dtype)
        for key, value in zip(
            ("prefix_key", "prefix_value"), layer.prefix(name)
        ):
            value = np.asarray(keras.ops.convert_to_numpy(value))
            yield (
                layer_addresses[id(layer)] + key,
                f"{layer.path}/{key}",
                dtype,
                value.astype(_stored_dtype(dtype)),
            )


def _stored_dtype(dtype):
    """The dtype a variable of `dtype` is stored as: floats (bfloat16 has no
    portable NumPy dtype) as float32, which holds each exactly."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if "float" in dtype else dtype


def _to_numpy(variable):
    value = np.asarray(keras.ops.convert_to_numpy(variable.value))
    return value.astype(_stored_dtype(variable.dtype))


class _Bundle:
    """A validated adapter directory."""

    def __init__(self, document, arrays, configs):
        self.document = document
        self.arrays = arrays
        self.configs = configs


def _read_bundle(path):
    def fail(reason):
        raise ValueError(f"Cannot load adapter {path!r}: {reason}")

    if not os.path.isdir(path):
        fail("no such directory.")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        fail(f"missing {CONFIG_FILE}.")
    try:
        with open(config_path) as f:
            document = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"{CONFIG_FILE} is corrupted ({e}).")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        fail(f"{CONFIG_FILE} is not a keras-peft adapter config.")
    version = document.get("format_version")
    if version not in READABLE_VERSIONS:
        fail(
            f"format version {version!r} is not supported (this keras-peft "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))})."
        )
    expected_types = {
        "architecture": str,
        "backbone_class": str,
        "backbone_signature": dict,
        "configs": list,
        "weights_file": str,
        "weights_sha256": str,
        "variables": list,
    }
    for key, kind in expected_types.items():
        if not isinstance(document.get(key), kind):
            fail(
                f"{CONFIG_FILE} is corrupted: {key!r} is not a {kind.__name__}."
            )
    for entry in document["variables"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("key"), str)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(n, int) for n in entry["shape"])
            and (
                version == 1
                or (
                    isinstance(entry.get("address"), str)
                    and isinstance(entry.get("dtype"), str)
                )
            )
        ):
            fail(f"{CONFIG_FILE} is corrupted: bad variable entry {entry!r}.")
    if version > 1:
        addresses = [entry["address"] for entry in document["variables"]]
        if len(set(addresses)) != len(addresses):
            fail(f"{CONFIG_FILE} is corrupted: a variable address repeats.")

    weights_name = os.path.basename(document["weights_file"])
    weights_path = os.path.join(path, weights_name)
    if not os.path.isfile(weights_path):
        fail(f"missing {weights_name}.")
    if _sha256(weights_path) != document["weights_sha256"]:
        fail(f"{weights_name} is corrupted (checksum mismatch).")
    arrays = _read_arrays(weights_path, version, fail)
    for entry in document["variables"]:
        array = arrays.get(entry["key"])
        if array is None or list(array.shape) != entry["shape"]:
            fail(f"weights of {entry['path']!r} are missing or malformed.")
        if version > 1:
            try:
                expected = _stored_dtype(entry["dtype"])
            except ValueError:
                fail(
                    f"{entry['path']!r} has an unknown dtype "
                    f"{entry['dtype']!r}."
                )
            if str(array.dtype) != expected:
                fail(
                    f"weights of {entry['path']!r} are {array.dtype}, but a "
                    f"{entry['dtype']} variable is stored as {expected}."
                )

    configs = []
    for data in document["configs"]:
        try:
            configs.append(config_lib.config_from_dict(data))
        except (TypeError, ValueError) as e:
            fail(f"bad method config {data!r}: {e}")
    if not configs:
        fail("it holds no method config.")
    return _Bundle(document, arrays, tuple(configs))


def _read_arrays(weights_path, version, fail):
    """The named arrays of a weights file; never unpickles or runs code."""
    name = os.path.basename(weights_path)
    if version == 1:
        try:
            with np.load(weights_path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            fail(f"{name} is corrupted ({e}).")
    try:
        with open(weights_path, "rb") as f:
            return safetensors.numpy.load(f.read())
    except (OSError, ValueError, safetensors.SafetensorError) as e:
        fail(f"{name} is corrupted ({e}).")


def _describe_signature(signature):
    return ", ".join(f"{k}={v!r}" for k, v in sorted(signature.items()))


def load_adapter(model, path, name=None):
    """Loads an adapter saved by `save_adapter` into a model.

    Loads into the model's adapter `name` (by default the active one) if it
    has one (with the same configs); otherwise applies the saved configs as
    adapter `name` first
    (beside the model's other adapters, if any: it does not become the
    active one), then loads the weights. A bundle holding a computed
    prefix (`save_adapter`'s default) loads as a prefix trained directly
    (`reparam=False`); one saved with
    `keep_prefix_mlp=True` brings its MLP back. Everything is checked
    before any weight changes: a missing or corrupted directory, another
    architecture or model size, another method or another config (such as
    a different rank) raises a `ValueError` and leaves the model as it was.

    Args:
        model: a model with the same base weights as the one saved from.
        path: str. The adapter directory.
        name: str or `None`. The adapter to load into (or to create);
            defaults to the active adapter, or `"default"` in a model
            without adapters.

    Returns:
        The same `model`.

    Example:
    ```python
    fresh = keras_hub.models.BertTextClassifier(backbone, num_classes=2)
    keras_peft.load_adapter(fresh, "adapters/sst2")
    keras_peft.load_adapter(fresh, "adapters/mnli", name="mnli")
    ```
    """
    bundle = _read_bundle(path)
    document = bundle.document
    context = architectures.resolve_model(model)
    architecture = context.architecture
    if (
        document["architecture"] != architecture.name
        or document["backbone_class"] != type(context.backbone).__name__
    ):
        raise ValueError(
            f"Cannot load adapter {path!r}: it was saved for a "
            f"{document['backbone_class']} ({document['architecture']}), not "
            f"a {type(context.backbone).__name__}."
        )
    signature = architecture.signature(context.backbone)
    if document["backbone_signature"] != signature:
        raise ValueError(
            f"Cannot load adapter {path!r}: it was saved for a "
            f"{document['backbone_class']} with "
            f"{_describe_signature(document['backbone_signature'])}; this "
            f"model has {_describe_signature(signature)}."
        )

    state = state_lib.get_state(context.backbone)
    if name is None:
        name = state.active if state else state_lib.DEFAULT_NAME
    name = switching.check_name(name)
    adapters = state.adapters if state else {}
    applied = adapters[name].configs if name in adapters else ()
    if applied == bundle.configs:
        plan = None
        named = switching.named_variables(context.model, name)
    elif name not in adapters:
        plan = injection.plan(
            context.model, bundle.configs, initialize=False, name=name
        )
        trainable = {id(v) for v in plan.trainable_variables_after()}
        named = switching.named_variables(
            context.model,
            name,
            plan.replacement_view(),
            trainable,
            absorbed=plan.absorbed,
        )
    else:
        mismatch = _describe_config_mismatch(bundle.configs, applied)
        hint = (
            " The file holds the prefix its MLP computed, saved without the "
            "MLP: call `keras_peft.eject_prefix(model)` first, or load it "
            "into a model without adapters."
            if eject.ejected_configs(applied) == bundle.configs
            else " Load it under another name (`name=...`), into a model "
            "without adapters, or into one with the same configs."
        )
        raise ValueError(
            f"Cannot load adapter {path!r}: the model's adapter {name!r} "
            f"has other configs ({mismatch}).{hint}"
        )
    variables = [variable for _, variable in named]
    addresses = {id(variable): address for address, variable in named}

    try:
        if document["format_version"] == 1:
            pairs = _match_in_order(
                path, document["variables"], variables, bundle.arrays
            )
        else:
            pairs = _match_by_address(
                path, document["variables"], variables, addresses, bundle.arrays
            )
    except BaseException:
        if plan is not None:
            plan.abandon()
        raise
    # A merged layer holds its update inside the frozen kernel: take it out,
    # load the new values, and fold them back in.
    merged = [
        layer
        for layer, _ in layer_tree.iter_layers(context.model)
        if getattr(layer, "merged", False)
    ]
    for layer in merged:
        layer.unmerge()
    for variable, value in pairs:
        variable.assign(value.astype(variable.dtype))
    for layer in merged:
        layer.merge()
    if plan is not None:
        plan.install("keras_peft.load_adapter")
    surgery.forget_compiled_functions(context.model)
    return model


def _describe_config_mismatch(saved, applied):
    if len(saved) != len(applied):
        return f"{len(saved)} configs in the file, {len(applied)} in the model"
    parts = [
        f"{name}={theirs!r} in the file but {name}={mine!r} in the model"
        for file_config, model_config in zip(saved, applied)
        for name, theirs, mine in file_config.differences(model_config)
    ]
    return "; ".join(parts)


def _match_by_address(path, entries, variables, addresses, arrays):
    """Pairs saved entries with model variables by their addresses in the
    model, checking that both hold the same set, shapes and dtypes."""
    saved = {entry["address"]: entry for entry in entries}
    current = {addresses[id(v)]: v for v in variables}
    only_saved = sorted(set(saved) - set(current))
    only_current = sorted(set(current) - set(saved))
    if only_saved or only_current:
        raise ValueError(
            f"Cannot load adapter {path!r}: its variables are not the "
            f"model's trainable variables. Only in the file: "
            f"{_first(only_saved)}; only in the model: {_first(only_current)}."
        )
    pairs = []
    for address, variable in current.items():
        entry = saved[address]
        if tuple(entry["shape"]) != tuple(variable.shape):
            raise ValueError(
                f"Cannot load adapter {path!r}: variable {address!r} has "
                f"shape {tuple(entry['shape'])} in the file but "
                f"{tuple(variable.shape)} in the model."
            )
        if _stored_dtype(entry["dtype"]) != _stored_dtype(variable.dtype):
            raise ValueError(
                f"Cannot load adapter {path!r}: variable {address!r} is "
                f"{entry['dtype']} in the file but {variable.dtype} in the "
                "model."
            )
        pairs.append((variable, arrays[entry["key"]]))
    return pairs


def _first(names, count=5):
    if len(names) <= count:
        return names
    return f"{names[:count]} and {len(names) - count} more"


def _match_in_order(path, entries, variables, arrays):
    """Pairs the entries of a version-1 bundle with model variables by
    position, checking shapes and (loosely) paths."""
    if len(entries) != len(variables):
        saved = {_normalized(e["path"]) for e in entries}
        have = {_normalized(v.path) for v in variables}
        raise ValueError(
            f"Cannot load adapter {path!r}: it holds {len(entries)} trainable "
            f"variables but the model has {len(variables)}. Only in the "
            f"file: {sorted(saved - have)}; only in the model: "
            f"{sorted(have - saved)}."
        )
    pairs = []
    for entry, variable in zip(entries, variables):
        if not _paths_correspond(entry["path"], variable.path):
            raise ValueError(
                f"Cannot load adapter {path!r}: saved variable "
                f"{entry['path']!r} does not correspond to the model's "
                f"{variable.path!r}."
            )
        if tuple(entry["shape"]) != tuple(variable.shape):
            raise ValueError(
                f"Cannot load adapter {path!r}: variable {entry['path']!r} "
                f"has shape {tuple(entry['shape'])} in the file but "
                f"{tuple(variable.shape)} in the model."
            )
        pairs.append((variable, arrays[entry["key"]]))
    return pairs
