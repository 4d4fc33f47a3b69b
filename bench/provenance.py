"""Where a result came from: code version, packages, machine, device."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("bench-recsys", "numpy", "scipy", "pandas", "implicit", "lightfm-next", "torch", "transformers",
            "peft", "matplotlib", "ranx")


def git_state(start: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout bench runs from (None outside git)."""
    where = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip()) if commit else None}


def git_diff_digest(start: Path | None = None) -> str | None:
    """Hash of uncommitted changes to tracked files (None when clean or outside git)."""
    where = start or Path(__file__).resolve().parent
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=where, capture_output=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return hashlib.sha256(diff).hexdigest()[:16] if diff else None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def gpu_description() -> str | None:
    """The CUDA device name, probed only when torch is already loaded (importing it costs seconds)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except (RuntimeError, AttributeError):
        pass
    return None


def machine() -> dict[str, Any]:
    """A description precise enough to warn when runs from different machines are compared."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpu": gpu_description(),
    }


def machine_key(description: dict[str, Any]) -> tuple[Any, ...]:
    """The fields that make timings comparable (hostname deliberately excluded)."""
    return tuple(description.get(k) for k in ("cpu", "cpu_count", "memory_gib", "gpu"))


def collect(device: str) -> dict[str, Any]:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "device": device,
    }
