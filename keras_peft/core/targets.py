"""Finding the layers a method targets, by patterns on `layer.path`."""

import re

from keras_peft.core import layer_tree


def validate_patterns(patterns, owner):
    """Checks and normalizes a `targets` value to a tuple of strings.

    Args:
        patterns: `None`, a string, or a sequence of non-empty strings.
        owner: str. Name of the config, for error messages.
    """
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not isinstance(patterns, (list, tuple)) or not patterns:
        raise ValueError(
            f"{owner} `targets` must be None or a non-empty list of layer "
            f"path patterns. Received: targets={patterns!r}"
        )
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(
                f"{owner} `targets` entries must be non-empty strings. "
                f"Received: {pattern!r}"
            )
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"{owner} target {pattern!r} is not a valid regular "
                f"expression: {e}"
            ) from None
    return tuple(patterns)


def pattern_matches(pattern, path):
    """Whether a target pattern selects the layer at `path`.

    A pattern matches when it equals the path, when it equals the path's
    last `/`-separated components (`"query"` or `"self_attention/query"`),
    or when it fully matches the path as a regular expression.
    """
    if path is None:
        return False
    if path == pattern or path.endswith("/" + pattern):
        return True
    return re.fullmatch(pattern, path) is not None


def find_targets(root, patterns, layer_types, method_name, require_each=True):
    """Returns the layers of the given types whose path matches a pattern.

    Every pattern must match at least one layer (or, with
    `require_each=False`, the patterns together); one that matches nothing
    raises a `ValueError` that lists the candidate paths.

    Args:
        root: the layer to search, usually a backbone.
        patterns: tuple of str. Target patterns.
        layer_types: tuple of layer classes a target may be.
        method_name: str. For error messages.
        require_each: bool. Whether each pattern must match. Defaults to
            `True`.

    Returns:
        The matching layers, in tree order, without duplicates.
    """
    candidates = [
        layer
        for layer, _ in layer_tree.iter_layers(root)
        if isinstance(layer, layer_types) and layer.path
    ]
    matched, unmatched = [], []
    for pattern in patterns:
        hits = [c for c in candidates if pattern_matches(pattern, c.path)]
        if not hits:
            unmatched.append(pattern)
        for hit in hits:
            if not any(hit is m for m in matched):
                matched.append(hit)
    if not require_each and matched:
        unmatched = []
    if unmatched:
        kinds = "/".join(t.__name__ for t in layer_types)
        listing = "\n  ".join(c.path for c in candidates) or "(none)"
        raise ValueError(
            f"{method_name} targets {unmatched} match no {kinds} layer of "
            f"{type(root).__name__}. Patterns are matched against "
            f"`layer.path` (equal, a trailing part such as 'query', or a "
            f"full regular-expression match). Candidate paths:\n  {listing}"
        )
    order = {id(c): i for i, c in enumerate(candidates)}
    return sorted(matched, key=lambda layer: order[id(layer)])
