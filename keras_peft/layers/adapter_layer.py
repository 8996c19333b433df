"""The base class that marks a layer as holding keras-peft weights."""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_peft.core.scopes import scope_of
from keras_peft.layers import routing


class AdapterLayer(keras.layers.Layer):
    """A layer that owns new, trainable adapter weights.

    keras-peft finds adapter weights by structure: every variable of an
    `AdapterLayer` that does not belong to its wrapped `base_layer` is an
    adapter variable. Subclasses set the class attribute `method` to the
    name of the method they implement.

    One layer can hold the weights of several named adapters (`slots`):
    slot 0 is the variables the layer built; `add_slot` gives it another
    adapter's, of the same shapes (but for `padded_axes`). The slots after
    slot 0 are rows of the layer's `bank_variables`: one variable per
    slot-0 variable, every further slot stacked on its leading axis, so
    that a layer holding many adapters has few variables (TensorFlow pays
    per variable, made and read, far more than per byte).

    Once `enable_switching()` made its int32 `active_slot` variable, the
    layer computes with the slot that variable names, or, when it names
    no slot (`len(slot_names)`), with zeros in place of every adapter
    variable: the layer then adds exactly nothing. Switching is an
    assignment, so compiled functions keep running without being traced
    again. Subclasses read their adapter variables through `slot_values`.

    While disabled (`keras_peft.layers.disabling`), a layer computes what
    its base layer computes.
    """

    method = ""
    # Whether the layer reads its adapter variables through `slot_values`
    # (and so can hold several named adapters and switch between them).
    switchable = False
    # Settings that may differ between adapters sharing the layer.
    slot_independent_settings = ()
    # Settings each slot keeps its own (LoRA's rank and alpha): they may
    # differ between adapters sharing the layer. They size the variables
    # along `padded_axes` (variable name to axis): slots are padded with
    # zeros to one shape where they are stacked.
    per_slot_settings = ()
    padded_axes = {}

    @property
    def wrapped_layer(self):
        """The frozen layer this adapter wraps, or `None`."""
        return getattr(self, "base_layer", None)

    @property
    def adapter_variables(self):
        """The variables this layer adds, excluding its base layer's and
        its `active_slot`: every slot's weights."""
        base = self.wrapped_layer
        excluded = {id(v) for v in base.weights} if base is not None else set()
        # Its own switch and those of adapter layers inside it.
        for layer in self._flatten_layers():
            switch = getattr(layer, "active_slot", None)
            if switch is not None:
                excluded.add(id(switch))
        return [v for v in self.weights if id(v) not in excluded]

    # Named slots.

    @property
    def slot_names(self):
        """The names of the adapters this layer holds weights for, slot 0
        first."""
        return tuple(self.__dict__.get("_slot_names", ()))

    def set_slot_names(self, names):
        """Names the slots (`keras_peft.apply` names slot 0)."""
        self.__dict__["_slot_names"] = tuple(names)

    @property
    def active_slot(self):
        """The int32 variable holding the slot this layer computes with, or
        `None` while the layer always computes with slot 0."""
        return self.__dict__.get("_active_slot")

    def slot_variables(self, slot=0):
        """The adapter variables of one slot, in slot 0's order.

        Slot 0's are the layer's own variables. A further slot's are rows
        of the layer's banks (`SlotRow`s): they read and assign like
        variables, at the slot's own shape.
        """
        template = self._template_variables()
        if slot == 0:
            return template
        shapes = self.__dict__["_slot_shapes"][slot - 1]
        return [
            SlotRow(self, bank, slot, shape, variable.name)
            for variable, bank, shape in zip(
                template, self.bank_variables, shapes
            )
        ]

    def stands_for(self):
        """The variables whose addresses slot 0's variables take in an
        adapter bundle: by default, slot 0's own."""
        return self.slot_variables(0)

    @property
    def bank_variables(self):
        """One variable per slot-0 variable, holding every further slot's
        values stacked on a leading axis (padded to one shape along
        `padded_axes`); empty while the layer holds one slot."""
        return list(self.__dict__.get("_bank_variables", []))

    def _template_variables(self):
        banked = {id(v) for v in self.bank_variables}
        return [v for v in self.adapter_variables if id(v) not in banked]

    def check_slot_source(self, source):
        """Raises a `ValueError` unless `source`, a layer built for another
        adapter, can become one of this layer's slots: same class, same
        settings, same variable shapes and dtypes."""
        mine, theirs = self.slot_signature(), source.slot_signature()
        if type(source) is not type(self) or mine != theirs:
            differences = ", ".join(
                f"{key}={theirs.get(key)!r} instead of {mine.get(key)!r}"
                for key in sorted(set(mine) | set(theirs))
                if mine.get(key) != theirs.get(key)
            )
            raise ValueError(
                f"{type(self).__name__} {self.path!r} holds the adapters "
                f"{list(self.slot_names)}; another adapter at this layer "
                f"must match them, but has {differences}. Adapters sharing "
                "a layer need the same method and settings (LoRA's dropout, "
                "a bottleneck's activation, a learned or fixed scale, a "
                "prefix's length); LoRA ranks and alphas, bottleneck widths "
                "and fixed scales may differ."
            )

    def slot_signature(self):
        """What adapters sharing this layer must agree on: its settings and
        its slot-0 variables' names, shapes and dtypes."""
        config = self.signature_config()
        ignored = ("name", "dtype", "trainable", "base_layer", "merged")
        for key in (
            ignored
            + tuple(self.slot_independent_settings)
            + tuple(self.per_slot_settings)
        ):
            config.pop(key, None)
        for key in [k for k in config if k.endswith("initializer")]:
            # How a slot started does not matter once it holds values.
            del config[key]
        config["variables"] = [
            (v.name, self._unpadded_shape(v.name, v.shape), str(v.dtype))
            for v in self._template_variables()
        ]
        return {key: repr(value) for key, value in config.items()}

    def _unpadded_shape(self, name, shape):
        """`shape`, `None` on the axis the per-slot settings size."""
        shape = list(shape)
        axis = self.padded_axes.get(name)
        if axis is not None:
            shape[axis] = None
        return tuple(shape)

    def signature_config(self):
        """The settings `slot_signature` compares: `get_config()`, by
        default (the base layer, name and initializers left out)."""
        return self.get_config()

    def slot_setting(self, slot, key):
        """The value of per-slot setting `key` in slot `slot`."""
        if slot == 0:
            return getattr(self, key)
        return self.__dict__["_slot_settings"][slot - 1][key]

    def _set_slot_settings(self, slot, settings):
        if slot == 0:
            for key, value in settings.items():
                setattr(self, key, value)
        else:
            self.__dict__["_slot_settings"][slot - 1] = dict(settings)

    def _settings_of(self, slot):
        return {
            key: self.slot_setting(slot, key) for key in self.per_slot_settings
        }

    def enable_switching(self):
        """Creates `active_slot` (pointing at slot 0). Idempotent."""
        if self.active_slot is not None:
            return
        with self._unlocked():
            variable = self.add_weight(
                name="active_slot",
                shape=(),
                dtype="int32",
                initializer="zeros",
                trainable=False,
            )
        self.__dict__["_active_slot"] = variable

    def disable_switching(self):
        """Drops `active_slot` (the layer holds one adapter again and
        computes with slot 0). Idempotent."""
        variable = self.active_slot
        if variable is None:
            return
        if len(self.slot_names) > 1:
            raise ValueError(
                f"{self.path!r} holds the adapters {list(self.slot_names)}; "
                "it keeps switching between them."
            )
        with self._unlocked():
            self._untrack_variable(variable)
        self.__dict__["_active_slot"] = None

    def add_slot(self, name, source):
        """Adds a slot for adapter `name` holding copies of `source`'s slot-0
        values (`check_slot_source` passed)."""
        values = [_numpy(v) for v in source.slot_variables(0)]
        self._set_bank_rows(self._bank_rows() + [values])
        settings = list(self.__dict__.get("_slot_settings", []))
        self.__dict__["_slot_settings"] = settings + [
            {key: getattr(source, key) for key in self.per_slot_settings}
        ]
        self.set_slot_names(self.slot_names + (name,))

    def _bank_rows(self):
        """The values of every slot after slot 0: per slot, one array per
        slot-0 variable, at the slot's own shape."""
        count = len(self.__dict__.get("_slot_shapes", []))
        # Each bank read once, not once per slot.
        banks = [_numpy(bank) for bank in self.bank_variables]
        return [
            [
                np.array(bank[row.index])
                for bank, row in zip(banks, self.slot_variables(slot))
            ]
            for slot in range(1, count + 1)
        ]

    def _set_bank_rows(self, rows):
        """Makes the banks anew to hold `rows` (per slot after slot 0, one
        array per slot-0 variable, in slot 0's order).

        A bank is remade whole, under the same name, so its path (and the
        name TensorFlow gives it) stays that of the bank it replaces, and
        with room for more slots than it holds (`bank_capacity`): each
        variable of a new name, or of a new shape under a name, costs
        memory that TensorFlow keeps for the process's life.
        """
        template = self._template_variables()
        banks = []
        with self._unlocked():
            for variable in self.bank_variables:
                self._untrack_variable(variable)
            self.__dict__["_bank_variables"] = []
            if rows:
                for i, variable in enumerate(template):
                    stacked = _stack_padded(
                        [row[i] for row in rows],
                        self.padded_axes.get(variable.name),
                    )
                    spare = bank_capacity(len(rows)) - len(rows)
                    stacked = np.concatenate(
                        [stacked, np.zeros((spare,) + stacked.shape[1:])]
                    ).astype(stacked.dtype)
                    banks.append(
                        self._add_slot_variable(
                            f"{variable.name}__slots", stacked, variable
                        )
                    )
        self.__dict__["_bank_variables"] = banks
        self.__dict__["_slot_shapes"] = [
            [tuple(value.shape) for value in row] for row in rows
        ]

    def _add_slot_variable(self, name, value, like):
        """A variable named `name` holding `value`, of `like`'s dtype and
        flag."""
        # Made trainable, then given `like`'s flag: Keras files list a
        # layer's variables by where they were made (trainable ones first),
        # so a slot made while the model is frozen must sit where one made
        # in a fresh model does.
        variable = self.add_weight(
            name=name,
            shape=value.shape,
            dtype=like.dtype,
            initializer=_constant(value),
            trainable=True,
        )
        variable.trainable = like.trainable
        return variable

    def remove_slot(self, name):
        """Drops the slot of adapter `name` and its values. Slot 0 (the
        layer's own variables) takes over slot 1's values and name; a
        layer's only slot cannot be removed. The layer keeps computing with
        the adapter it computed with (with none, if that was `name`)."""
        slot = self.slot_names.index(name)
        if len(self.slot_names) == 1:
            raise ValueError(
                f"Adapter {name!r} is the only one {self.path!r} holds; "
                "remove the layer instead."
            )
        with self._keeping_selection():
            self._remove_slot(slot)

    @contextlib.contextmanager
    def _keeping_selection(self):
        """Points `active_slot`, once the slots moved, at the adapter it
        pointed at before (at no slot, if that one is gone)."""
        switch = self.active_slot
        names = self.slot_names
        index = None if switch is None else int(ops.convert_to_numpy(switch))
        yield
        if switch is not None:
            active = names[index] if index < len(names) else None
            self.select(active)

    def _remove_slot(self, slot):
        if slot == 0:
            self._swap_first_slots()
            slot = 1
        rows = self._bank_rows()
        rows.pop(slot - 1)
        self._set_bank_rows(rows)
        settings = list(self.__dict__.get("_slot_settings", []))
        settings.pop(slot - 1)
        self.__dict__["_slot_settings"] = settings
        names = list(self.slot_names)
        names.pop(slot)
        self.set_slot_names(names)

    def _swap_first_slots(self):
        """Swaps slots 0 and 1: values, per-slot settings and names."""
        first, second = self.slot_variables(0), self.slot_variables(1)
        first_settings, second_settings = (
            self._settings_of(0),
            self._settings_of(1),
        )
        names = list(self.slot_names)
        if [tuple(v.shape) for v in first] == [tuple(v.shape) for v in second]:
            values = [_numpy(v) for v in first]
            for variable, value in zip(first, second):
                variable.assign(value.numpy())
            for row, value in zip(second, values):
                row.assign(value)
        else:
            self._rebuild_slots([1, 0] + list(range(2, len(names))))
        self._set_slot_settings(0, second_settings)
        self._set_slot_settings(1, first_settings)
        names[0], names[1] = names[1], names[0]
        self.set_slot_names(names)

    def order_slots(self, names):
        """Puts the slots in the order their names have in `names` (names
        not in it last, as they are): values, per-slot settings and names.

        A model keeps every layer's slots in the order of its adapters, so
        that a model rebuilt by applying them in that order (`.keras`
        loading) has the same slots, row for row, as the one saved.
        """
        held = list(self.slot_names)
        rank = {name: k for k, name in enumerate(names)}
        order = sorted(
            range(len(held)), key=lambda s: rank.get(held[s], len(rank))
        )
        if order == list(range(len(held))):
            return
        settings = [self._settings_of(slot) for slot in order]
        with self._keeping_selection():
            self._rebuild_slots(order)
            for slot, slot_settings in enumerate(settings):
                self._set_slot_settings(slot, slot_settings)
            self.set_slot_names([held[slot] for slot in order])

    def _rebuild_slots(self, order):
        """Makes every slot variable anew, slot `order[k]`'s values in
        slot `k` (variables of other shapes cannot be assigned), in the
        order a layer built slot by slot has them."""
        rows = [[_numpy(v) for v in self.slot_variables(0)]]
        rows += self._bank_rows()
        rows = [rows[s] for s in order]
        template = self.slot_variables(0)
        attributes = {
            id(value): key
            for key, value in vars(self).items()
            if any(value is v for v in template)
        }
        with self._unlocked():
            for variable in template + self.bank_variables:
                self._untrack_variable(variable)
            self.__dict__["_bank_variables"] = []
            for variable, value in zip(template, rows[0]):
                new = self._add_slot_variable(variable.name, value, variable)
                object.__setattr__(self, attributes[id(variable)], new)
        self._set_bank_rows(rows[1:])

    def select(self, name):
        """Points `active_slot` at adapter `name`'s slot, or at no slot when
        this layer holds none for `name`."""
        names = self.slot_names
        slot = names.index(name) if name in names else len(names)
        self.active_slot.assign(slot)

    @contextlib.contextmanager
    def _unlocked(self):
        locked = self._tracker.locked
        with scope_of(self.path or self.name):
            self._tracker.unlock()
            try:
                yield
            finally:
                if locked:
                    self._tracker.lock()

    @property
    def switched(self):
        """Whether `slot_values` picks among slots (switching is enabled,
        or the layer is routed per example) rather than giving the layer's
        own variables."""
        return self.active_slot is not None or self.routed

    @property
    def routed(self):
        """Whether the layer computes per example (`routing.per_example`):
        `slot_values` then gives each value a leading batch axis."""
        return routing.current() is not None

    def _slot_index(self):
        """The slot to compute with: a scalar, or one per example."""
        if routing.current() is None:
            return ops.convert_to_tensor(self.active_slot)
        return self._slot_plan().index

    def slot_table(self, names):
        """`(table, count)`: this layer's slot for each adapter of `names`
        (`len(slot_names)`, none, for one it does not hold) and the slots
        in its bank; layers of equal tables route examples alike."""
        held = self.slot_names
        # A layer built by hand (no names) serves every adapter.
        table = tuple(
            held.index(n) if n in held else (len(held) if held else 0)
            for n in names
        )
        return table, self._bank_count()

    def _bank_count(self):
        """The slots held in the bank (every slot but slot 0)."""
        return len(self.__dict__["_slot_shapes"]) if self.bank_variables else 0

    def _slot_plan(self):
        """The `routing.SlotPlan` of the slot to compute with: the active
        one, or while routed, each example's (the route's plan, shared
        with the layers holding the same adapters)."""
        route = routing.current()
        if route is None:
            index = ops.convert_to_tensor(self.active_slot)
            return routing.SlotPlan(index, self._bank_count())
        return route.plan(*self.slot_table(route.names))

    def slot_values(self, *variables):
        """The values to compute with in place of slot-0 `variables`: the
        variables themselves, or, once switching is enabled, those of the
        active slot (zeros when it names none); while routing per example,
        each example's, stacked on a leading batch axis."""
        if not self.switched:
            return variables if len(variables) > 1 else variables[0]
        plan = self._slot_plan()
        values = []
        for variable in variables:
            # `.value`: read as the layer reads its variables (autocast).
            value = self.slot_value(variable, lambda v: v.value, plan)
            values.append(self._scaled(variable.name, value, plan.index))
        return tuple(values) if len(values) > 1 else values[0]

    def slot_value(self, variable, read, plan, past=None):
        """The value of slot-0 `variable` (read by `read`, at the stacked
        shape `slot_stack` pads to) in the slot `plan` (a
        `routing.SlotPlan`) picks, or `past` (default zeros) where it
        picks none; with one slot per example, stacked. What
        `take_slot(slot_stack(...), plan.index)` gives, but only the rows
        taken are copied, not every slot's: a bank of 100 slots is read,
        not stacked again on every call."""
        i = self._template_index(variable)
        own = ops.expand_dims(read(variable), 0)
        # Slot 0 and the bank are read whatever the route takes: the value
        # keeps the stacked shape the layer's other tensors are sized by
        # (a prompt's mask), and every slot's variables take a gradient
        # (zeros where no example takes them), as in any route.
        if plan.count:
            row = ops.take(read(self.bank_variables[i]), plan.rows, axis=0)
            own, row = self._aligned(variable, own, row, plan.flat)
        own_mask, banked = plan.masks(len(own.shape))
        # "None" holds no variable: where no example can take it (a route
        # of adapters every layer holds), it is not read, and slot 0 and
        # the bank row are picked with one `where`.
        if past is None or not plan.takes_none:
            # A scalar, spread by `where`: not a tensor of zeros.
            value = ops.convert_to_tensor(0, own.dtype)
        else:
            value = ops.cast(ops.expand_dims(past, 0), own.dtype)
        if plan.count:
            value = ops.where(banked, row, value) if plan.takes_none else row
        value = ops.where(own_mask, own, value)
        return value if len(plan.index.shape) else value[0]

    def _template_index(self, variable):
        template = self._template_variables()
        return next(k for k, v in enumerate(template) if v is variable)

    def slot_stack(self, variable, read):
        """Every slot's value of slot-0 `variable`, stacked on a leading
        axis (padded along `padded_axes` to one shape): `read(variable)`,
        then the rows of its bank, read by `read` too."""
        i = self._template_index(variable)
        own = ops.expand_dims(read(variable), 0)
        banks = self.bank_variables
        if not banks:
            return own
        own, bank = self._aligned(
            variable, own, self._bank_value(banks[i], read)
        )
        return ops.concatenate([own, bank], axis=0)

    def _aligned(self, variable, own, rows, slots=None):
        """`own` (slot-0 `variable`'s value, on a leading axis) and `rows`
        (of its bank: every slot's, or those of `slots`), their padding
        zeroed (`_without_padding`) and both padded to one shape along
        `variable`'s padded axis, if it has one."""
        axis = self.padded_axes.get(variable.name)
        if axis is None:
            return own, rows
        axis = axis % len(variable.shape) + 1
        i = self._template_index(variable)
        rows = self._without_padding(rows, i, axis, slots)
        size = max(own.shape[axis], rows.shape[axis])
        return _pad_to(own, axis, size), _pad_to(rows, axis, size)

    def _bank_value(self, bank, read):
        """`read(bank)`, its rows for the slots it holds only (not the room
        for more)."""
        value = read(bank)
        count = self._bank_count()
        return value[:count] if value.shape[0] > count else value

    def _without_padding(self, rows, i, axis, slots=None):
        """`rows` (of the bank of slot-0 variable `i`, padded along
        `axis`: every slot's in order, or those of `slots`, a tensor of
        slot indices clipped into the bank) with their padding replaced by
        zeros, which take no gradient: the padding itself must never train
        (a bottleneck of sigmoid units would otherwise pass it one)."""
        widths = [
            shapes[i][axis - 1] for shapes in self.__dict__["_slot_shapes"]
        ]
        size = rows.shape[axis]
        if min(widths) == size:
            return rows
        mask = np.arange(size)[None, :] < np.array(widths)[:, None]
        if slots is not None:
            slots = ops.clip(slots - 1, 0, len(widths) - 1)
            mask = ops.take(ops.convert_to_tensor(mask), slots, axis=0)
        shape = [-1] + [1] * (len(rows.shape) - 1)
        shape[axis] = size
        return ops.where(ops.reshape(mask, shape), rows, ops.zeros_like(rows))

    def slot_scales(self, name):
        """Per slot, the factor variable `name` (slot 0's name) is
        multiplied by where slots are stacked, or `None` for none: each
        slot's own scale (LoRA's `alpha / rank`)."""
        return None

    def _scaled(self, name, value, index):
        """`value`, taken at `index` from the stack of variable `name`,
        times the scale of its slot (1 past the last slot)."""
        scales = self.slot_scales(name)
        if scales is None:
            return value
        if len(set(scales)) == 1:
            # Where no slot is taken the value is zeros, whatever scales it.
            return ops.multiply(value, ops.cast(scales[0], value.dtype))
        table = ops.convert_to_tensor(list(scales) + [1.0], "float32")
        scale = ops.cast(ops.take(table, index), value.dtype)
        if len(ops.shape(scale)):
            # One per example: along the batch axis.
            scale = ops.reshape(scale, (-1,) + (1,) * (len(value.shape) - 1))
        return ops.multiply(value, scale)


def bank_capacity(count):
    """The rows a bank holding `count` slots has: `count` up to 8, then
    the next multiple of 8, so that 100 adapters give 20 bank shapes, not
    100, at most 7 rows of zeros each."""
    return count if count <= 8 else -(-count // 8) * 8


def take_slot(stacked, index):
    """`stacked[index]` (one value per slot, stacked on a leading axis),
    zeros for `index == len(stacked)`; with `index` of shape `(batch,)`,
    one per example, stacked."""
    stacked = ops.concatenate([stacked, ops.zeros_like(stacked[:1])], 0)
    return ops.take(stacked, index, axis=0)


class SlotRow:
    """One slot's value of one adapter variable, kept in a row of its
    layer's bank: read and assigned like a variable, at the slot's own
    shape (its bank may be padded wider).

    Args:
        layer: the `AdapterLayer` holding the bank.
        bank: the bank variable.
        slot: int >= 1. The slot (row `slot - 1`).
        shape: tuple. The slot's own shape of the variable.
        name: str. The slot-0 variable's name.
    """

    def __init__(self, layer, bank, slot, shape, name):
        self.bank = bank
        self.slot = slot
        self.shape = tuple(shape)
        self.name = name
        names = layer.slot_names
        owner = names[slot] if slot < len(names) else str(slot)
        # Where a variable of its own would be.
        self.path = f"{bank.path.rpartition('/')[0]}/{name}__{owner}"

    @property
    def dtype(self):
        return self.bank.dtype

    @property
    def trainable(self):
        return self.bank.trainable

    @property
    def value(self):
        """The slot's value, read as the bank reads (autocast inside a
        mixed-precision layer)."""
        return self._of(self.bank.value)

    def _of(self, stacked):
        row = stacked[self.slot - 1]
        return row[self._region()] if self.shape else row

    @property
    def index(self):
        """Where the slot's values are in its bank: a NumPy index."""
        return (self.slot - 1,) + self._region()

    def numpy(self):
        """The slot's value as a NumPy array."""
        stacked = np.asarray(ops.convert_to_numpy(self.bank))
        return np.array(stacked[self.index])

    def __array__(self, dtype=None, copy=None):
        value = self.numpy()
        return value if dtype is None else value.astype(dtype)

    def _region(self):
        return tuple(slice(0, n) for n in self.shape)

    def assign(self, value):
        """Sets the slot's value (of the slot's shape)."""
        value = np.asarray(value)
        if tuple(value.shape) != self.shape:
            raise ValueError(
                f"Slot {self.slot} of {self.path!r} has shape {self.shape}; "
                f"received a value of shape {tuple(value.shape)}."
            )
        stacked = np.array(ops.convert_to_numpy(self.bank))
        # Padding stays zero.
        stacked[self.slot - 1] = 0
        stacked[self.index] = value
        self.bank.assign(stacked)

    def __repr__(self):
        return f"<SlotRow path={self.path} shape={self.shape}>"


def _numpy(variable):
    if isinstance(variable, SlotRow):
        return variable.numpy()
    return np.array(ops.convert_to_numpy(variable))


def _pad_to(value, axis, size):
    missing = size - value.shape[axis]
    if not missing:
        return value
    width = [[0, 0] for _ in value.shape]
    width[axis][1] = missing
    return ops.pad(value, width)


def _stack_padded(values, axis):
    """`values` (arrays) stacked on a new leading axis, padded with zeros
    along `axis` (or not, for `None`) to the widest."""
    if axis is None:
        return np.stack(values)
    size = max(v.shape[axis] for v in values)
    padded = []
    for value in values:
        width = [(0, 0)] * value.ndim
        width[axis] = (0, size - value.shape[axis])
        padded.append(np.pad(value, width))
    return np.stack(padded)


def _constant(value):
    def initializer(shape, dtype=None):
        return ops.cast(ops.convert_to_tensor(value), dtype)

    return initializer
