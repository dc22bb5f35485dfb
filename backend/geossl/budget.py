"""Wall-time budgets: how many optimisation steps fit in the minutes a user is willing to wait.

A mapper thinks in minutes ("ten minutes", "overnight"), a schedule in steps: the cosine schedule
must know its length before the first step. So a run with a time budget first *measures* a few
steps on real batches (their updates thrown away) and plans its length. A few timed steps cannot
see a machine that gets busier (or quieter) later, so a fine-tune also re-plans from its own pace
after each epoch (:func:`revise_steps`): the budget holds whatever else runs beside it. The plan
and every revision are recorded with the model; a run that was never revised is repeated exactly,
on any machine, by ``--steps N``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StepPlan:
    """The steps a run will make and how they were chosen (saved in the model's config)."""

    steps: int
    step_seconds: float | None = None  # measured median of one step (None: steps were given)
    budget_seconds: float | None = None
    revisions: tuple[tuple[int, int], ...] = ()  # (after step, new length): re-planned from the run's pace

    def revised(self, at_step: int, steps: int) -> StepPlan:
        return replace(self, steps=steps, revisions=(*self.revisions, (at_step, steps)))

    def to_dict(self) -> dict:
        d = {"steps": self.steps, "step_seconds": self.step_seconds, "budget_seconds": self.budget_seconds}
        return d | {"revisions": [list(r) for r in self.revisions]} if self.revisions else d

    @classmethod
    def from_dict(cls, d: dict) -> StepPlan:
        return cls(d["steps"], d.get("step_seconds"), d.get("budget_seconds"),
                   tuple((int(a), int(b)) for a, b in d.get("revisions", ())))


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


def revise_steps(planned: int, done: int, spent_seconds: float, left_seconds: float, minimum: int = 1,
                 maximum: int | None = None, tolerance: float = 0.05) -> int:
    """A run's length re-planned from its own pace: ``done`` steps took ``spent_seconds`` (their
    share of per-epoch work included) and ``left_seconds`` of the budget remain for more.

    Never fewer than the steps made (nor ``minimum``), never more than ``maximum``; kept at
    ``planned`` while within ``tolerance`` of it, since each revision bends the LR schedule.
    """
    if done <= 0 or spent_seconds <= 0:
        return planned
    n = done + math.floor(max(left_seconds, 0.0) * done / spent_seconds)
    n = max(n, done, minimum)
    if maximum is not None:
        n = min(n, maximum)
    return planned if abs(n - planned) <= tolerance * planned else n
