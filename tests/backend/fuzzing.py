"""Fuzz a running ``geossl serve`` from its own OpenAPI schema (schemathesis + hypothesis).

Shared by the CI test (a few hundred cases) and ``make fuzz`` (``tests/bench/fuzz.py``, ≥ 1000).
Every operation is driven with valid (``positive``) and invalid (``negative``) requests carrying
the token; the answer must never be a 5xx. A submission the service accepts (201: generated paths
that happen to exist) is cancelled at once, so fuzzing never starts heavy work.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass
class FuzzReport:
    """What a fuzzing run sent and got back."""

    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    per_operation: Counter = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    transport_errors: list[dict[str, Any]] = field(default_factory=list)
    accepted_jobs: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def count_5xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        d["per_operation"] = dict(sorted(self.per_operation.items()))
        d["count_5xx"] = self.count_5xx
        return d


def fuzz_service(url: str, token: str, examples: int = 20, seed: int = 0, timeout: float = 30.0) -> FuzzReport:
    """Up to ``examples`` positive and ``examples`` negative cases per operation of ``url``'s schema."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    auth = {"Authorization": f"Bearer {token}"}
    spec = httpx.get(f"{url}/openapi.json", headers=auth, timeout=timeout, trust_env=False).json()
    schema = schemathesis.openapi.from_dict(spec)
    report = FuzzReport()
    started = time.monotonic()
    config = settings(max_examples=examples, database=None, deadline=None, derandomize=False,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate],
                      verbosity=Verbosity.quiet, report_multiple_bugs=True)
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            one = _caller(url, auth, timeout, label, report)
            test = hypothesis.seed(seed)(config(hypothesis.given(op.as_strategy(generation_mode=mode))(one)))
            # Unsatisfiable: e.g. no invalid request exists for an operation without parameters.
            with contextlib.suppress(hypothesis.errors.Unsatisfiable, hypothesis.errors.FailedHealthCheck):
                test()
    report.duration_s = round(time.monotonic() - started, 2)
    return report


def _caller(url: str, auth: dict[str, str], timeout: float, label: str, report: FuzzReport) -> Any:
    def one(case: Any) -> None:
        _call(case, url, auth, timeout, label, report)

    return one


def _call(case: Any, url: str, auth: dict[str, str], timeout: float, label: str, report: FuzzReport) -> None:
    report.cases += 1
    report.per_operation[label] += 1
    try:
        response = case.call(base_url=url, headers=auth, timeout=timeout)
    except Exception as exc:  # connection refused/reset: the service died or hung
        report.transport_errors.append({"operation": label, "error": repr(exc)[:300], "case": _describe(case)})
        return
    report.statuses[response.status_code] += 1
    if response.status_code >= 500:
        report.server_errors.append({"operation": label, "status": response.status_code,
                                     "response": response.text[:300], "case": _describe(case)})
    elif response.status_code == 201 and label.startswith("POST /jobs/"):
        job_id = response.json().get("id")
        report.accepted_jobs.append(job_id)
        httpx.post(f"{url}/jobs/{job_id}/cancel", headers=auth, timeout=60, trust_env=False)


def _describe(case: Any) -> dict[str, Any]:
    return {k: repr(getattr(case, k, None))[:300] for k in ("path_parameters", "query", "body", "headers")}
