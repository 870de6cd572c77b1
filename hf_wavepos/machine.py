"""The machine a result was measured on, in words: one definition for every benchmark and training record."""

from __future__ import annotations

import os
import platform
import re
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
        threads = torch.get_num_threads()
        return f"CPU: {cpu_name()}, {threads} thread{'' if threads == 1 else 's'}"
    return device.type


# The instruction-set flags that decide how fast CPU attention runs (AVX-512, its bfloat16 and
# VNNI extensions, Intel AMX); `cpu_record` reports which of them the CPU has.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """Which of `CPU_FLAGS` the CPU reports (``flags`` of /proc/cpuinfo; empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_slug() -> str:
    """The CPU model as a file-name part: ``"AMD EPYC 9654"`` -> ``"amd_epyc_9654"``; trademark
    marks, "CPU" and the clock ("@ 2.10GHz") are dropped."""
    name = re.sub(r"\((R|TM|tm)\)|\bCPU\b|@.*$|\bProcessor\b", " ", cpu_name())
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "cpu"


def cpu_record() -> dict:
    """What a CPU result must state: model, relevant flags, torch threads, cores this process may
    use, the 1-minute load average now (other work on the machine), torch and Python versions."""
    return {
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "python": platform.python_version(),
    }
