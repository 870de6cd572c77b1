"""The machine a result was measured on, in words: one definition for every benchmark and training record."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU model (``model name`` of /proc/cpuinfo; elsewhere what `platform` reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str | None = None) -> str:
    """``"GPU: <name>"`` for a CUDA device, ``"CPU: <model>, <n> threads"`` for the CPU.

    Args:
        device: the device measured; None means the first GPU when there is one, else the CPU.
            Other device types are named by their type (``"mps"``).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
    return device.type
