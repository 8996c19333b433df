"""Writes one benchmark's section of benchmarks/RESULTS.md in place."""

import os
import platform
import re

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
HEADER = (
    "# keras-peft benchmark results\n\n"
    "Each section is written by the script it names (run by hand, never by "
    "the test suite). Re-running a script replaces only its own section.\n"
)


def machine():
    import keras
    import keras_hub
    import tensorflow as tf

    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, keras-hub {keras_hub.__version__}"
    )


def update_section(name, body):
    """Replaces (or appends) the section `name` of RESULTS.md with `body`."""
    text = open(RESULTS).read() if os.path.exists(RESULTS) else HEADER
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, RESULTS)
