"""Wall-time budgets: how many optimisation steps fit in the minutes a user is willing to wait.

A mapper thinks in minutes ("ten minutes", "overnight"), a schedule in steps: the cosine schedule
must know its length before the first step. So a run with a time budget first *measures* a few
steps on real batches (their updates thrown away), then fixes the number of steps once. The
schedule, and hence the model, is then a function of that number alone: it is recorded with the
model, and ``--steps N`` reproduces the run on any machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    """The steps a run will make and how they were chosen (saved in the model's config)."""

    steps: int
    step_seconds: float | None = None  # measured median of one step (None: steps were given)
    budget_seconds: float | None = None

    def to_dict(self) -> dict:
        return {"steps": self.steps, "step_seconds": self.step_seconds, "budget_seconds": self.budget_seconds}


def measure_seconds(step: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``step()`` after ``warmup`` untimed calls (the first ones allocate)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def steps_for(budget_seconds: float, step_seconds: float, every: int = 0, every_seconds: float = 0.0,
              fixed_seconds: float = 0.0, minimum: int = 1, maximum: int | None = None) -> int:
    """Steps that fit in ``budget_seconds``.

    ``fixed_seconds`` is spent once (calibration, final pass), ``every_seconds`` once per ``every``
    steps (end-of-epoch validation, checkpoints). Never fewer than ``minimum`` (a run that cannot
    fit still makes a model), never more than ``maximum``.
    """
    if budget_seconds <= 0 or step_seconds <= 0:
        raise ValueError("budget and step time must be positive")
    per_step = step_seconds + (every_seconds / every if every else 0.0)
    n = math.floor(max(budget_seconds - fixed_seconds, 0.0) / per_step)
    n = max(minimum, n)
    return min(n, maximum) if maximum is not None else n
