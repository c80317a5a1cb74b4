"""Peak resident memory of this process, resettable (Linux), for the memory
tests and the benchmarks.

Not getrusage's ru_maxrss: after fork + exec it keeps the forking parent's
peak (pytest's, say), which hides the growth being measured. Writing "5" to
/proc/self/clear_refs resets VmHWM (the peak) to the current RSS.
"""

from __future__ import annotations

import os


def available() -> bool:
    return os.path.exists("/proc/self/clear_refs")


def reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
