"""Learning-rate schedules as multipliers of the peak rate (for `torch.optim.lr_scheduler.LambdaLR`)."""

from __future__ import annotations

import math
from typing import Callable

from hf_wavepos.training.experiment_config import ScheduleSection


def lr_lambda(section: ScheduleSection, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each optimiser step.

    Linear warm-up over ``warmup_steps`` (step s uses (s + 1) / warmup_steps), then ``cosine``
    or ``linear`` decay to ``min_lr_ratio`` at ``total_steps``, or ``constant``.

    Args:
        section: the ``schedule`` section.
        total_steps: optimiser steps of the run.

    Returns:
        ``f(step) -> multiplier`` with step counted from 0. A plain function, so a resumed run
        with a longer budget follows its own (new) schedule.
    """
    warmup, floor, name = section.warmup_steps, section.min_lr_ratio, section.name

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress
        return floor + (1.0 - floor) * shape

    return multiplier
