"""The machine facts every benchmark prints: the CPU model (results are compared only within one run)."""
from __future__ import annotations

import platform


def cpu_model() -> str:
    """``model name`` of /proc/cpuinfo (else ``platform.processor()``, else "unknown")."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
