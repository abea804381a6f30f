"""What this process may use of the machine: the one place that counts its cores."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or ``taskset``'s limit),
    not the machine's count, which thread pools otherwise oversubscribe."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
