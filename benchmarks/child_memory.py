"""Memory of a benchmark variant, measured in a process of its own (Linux)."""

import json
import os
import subprocess

# glibc keeps freed blocks below its (growing) mmap threshold for reuse, so
# the resident size would stay at its high-water mark; with a fixed, low
# threshold every large buffer is unmapped when freed, and the resident
# size follows what is in use.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def memory_kib(field):
    """A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak():
    """Resets VmHWM to the current resident size (Linux 4.0 and later)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_child(command, timeout=3600):
    """Runs `command` under `MALLOC_ENV`; returns the JSON object its last
    line of output prints."""
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **MALLOC_ENV},
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])
