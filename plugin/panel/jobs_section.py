"""The "Jobs" section: every job of the backend, the selected one's progress, loss curve and metrics.

Jobs are polled (``GET /jobs/{id}`` about once a second, one request in flight per job): simple,
and it survives a dropped connection or a sleeping laptop. A job's owner (e.g. the Segment section)
passes a callback that runs once when that job succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qgis.core import Qgis
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import jobs as J
from ..client import ApiClient, ApiError
from .common import Section
from .loss_plot import LossPlot

POLL_MS = 1000
LOST_AFTER = 10  # consecutive failed polls before the user is told
OnSuccess = Callable[[dict], None]


class JobsSection(Section):
    """Lists jobs, follows the running ones, and cancels the selected one."""

    job_updated = pyqtSignal(object)  # job dict, after every poll
    job_finished = pyqtSignal(object)  # job dict, once, when it reaches a final state

    def __init__(self, client: ApiClient, parent: QWidget | None = None, poll_ms: int = POLL_MS) -> None:
        super().__init__("Jobs", client, None, parent)
        self.setObjectName("geosslJobsSection")
        self._jobs: dict[str, dict] = {}
        self._on_success: dict[str, OnSuccess] = {}
        self._in_flight: set[str] = set()
        self._losses_in_flight = False
        self._finished: set[str] = set()
        self._poll_failures = 0  # consecutive; reported once when contact seems lost

        self.table = QTableWidget(0, 3, self)
        self.table.setObjectName("geosslJobsTable")
        self.table.setHorizontalHeaderLabels(["Job", "State", "Progress"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.setMaximumHeight(88)
        self.table.itemSelectionChanged.connect(self._show_selected)

        self.title = QLabel("No job selected", self)
        self.title.setWordWrap(True)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("geosslJobProgress")
        self.progress.setTextVisible(True)
        self.loss_plot = LossPlot(self)
        self.metrics_label = QLabel(self)
        self.metrics_label.setObjectName("geosslMetrics")
        self.metrics_label.setTextFormat(Qt.RichText)
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("geosslCancelJob")
        self.cancel_button.setToolTip("Stop the selected job; a cancelled job writes no output")
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.resume_button = QPushButton("Resume", self)
        self.resume_button.setObjectName("geosslResumeJob")
        self.resume_button.setToolTip("Run an interrupted or failed job again (pretraining continues where it "
                                      "stopped)")
        self.resume_button.clicked.connect(self.resume_selected)

        buttons = QHBoxLayout()
        buttons.addWidget(self.title, 1)
        buttons.addWidget(self.resume_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.metrics_label)

        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self.poll)
        self._show_selected()

    # -- public -----------------------------------------------------------------------------------

    def jobs(self) -> dict[str, dict]:
        return dict(self._jobs)

    def job(self, identifier: str) -> dict | None:
        return self._jobs.get(identifier)

    def selected_id(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.table.item(rows[0].row(), 0).data(Qt.UserRole)

    def track(self, job: dict, on_success: OnSuccess | None = None) -> None:
        """Follow a job just submitted; select it so its progress shows at once."""
        identifier = J.job_id(job)
        if not identifier:
            self.error.emit(ApiError("The backend accepted the job but returned no job id."))
            return
        if on_success is not None:
            self._on_success[identifier] = on_success
        self._store(job)
        self.select(identifier)
        self._ensure_polling()

    def select(self, identifier: str) -> None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.UserRole) == identifier:
                self.table.selectRow(row)
                return

    def set_backend(self, info: Any) -> None:
        super().set_backend(info)
        if info is None:
            self._timer.stop()
            self._in_flight.clear()
            self._losses_in_flight = False
            return
        self.client.get("jobs", on_ok=self._on_job_list, on_error=lambda _e: None)
        self._ensure_polling()

    def cancel_selected(self) -> None:
        identifier = self.selected_id()
        if identifier is None:
            return
        self.cancel_button.setEnabled(False)
        self.client.post(f"jobs/{identifier}/cancel", on_ok=lambda job: self._on_job(identifier, job),
                         on_error=self.request_error("Cancel failed"))

    def resume_selected(self) -> None:
        identifier = self.selected_id()
        if identifier is None:
            return
        self.resume_button.setEnabled(False)

        def resumed(job: Any) -> None:
            self._finished.discard(identifier)
            self._on_job(identifier, job)
            self._ensure_polling()

        self.client.post(f"jobs/{identifier}/resume", on_ok=resumed, on_error=self.request_error("Resume failed"))

    def poll(self) -> None:
        """One round: refresh every unfinished job, and the selected job's loss curve."""
        if self.backend is None:
            return
        active = [i for i, job in self._jobs.items() if not J.is_terminal(job)]
        for identifier in active:
            if identifier in self._in_flight:
                continue
            self._in_flight.add(identifier)
            self.client.get(f"jobs/{identifier}", on_ok=lambda job, i=identifier: self._on_job(i, job),
                            on_error=lambda error, i=identifier: self._on_poll_error(i, error))
        self._fetch_losses()
        if not active:
            self._timer.stop()

    def shutdown(self) -> None:
        self._timer.stop()

    def update_state(self) -> None:
        job = self._jobs.get(self.selected_id() or "")
        connected = self.backend is not None and job is not None
        self.cancel_button.setEnabled(connected and not J.is_terminal(job))
        self.resume_button.setEnabled(connected and J.is_terminal(job) and J.resumable(job))
        self.resume_button.setVisible(job is not None and J.resumable(job))

    # -- answers ----------------------------------------------------------------------------------

    def _on_job_list(self, data: Any) -> None:
        items = data.get("jobs", []) if isinstance(data, dict) else data
        for job in reversed(items or []):  # newest first from the backend; each row goes on top
            if isinstance(job, dict) and J.job_id(job) and J.job_id(job) not in self._jobs:
                if J.is_terminal(job):
                    self._finished.add(J.job_id(job))  # history, not news
                self._store(job)
        self._ensure_polling()

    def _on_job(self, identifier: str, job: Any) -> None:
        self._in_flight.discard(identifier)
        self._poll_failures = 0
        if not isinstance(job, dict):
            return
        job.setdefault("id", identifier)
        self._store(job)
        self.job_updated.emit(job)
        if J.is_terminal(job) and identifier not in self._finished:
            self._finished.add(identifier)
            self._fetch_losses(force=True)
            self._announce(job)

    def _on_poll_error(self, identifier: str, error: ApiError) -> None:
        self._in_flight.discard(identifier)
        if error.status == 404:  # the backend forgot it (restarted): stop asking
            job = dict(self._jobs.get(identifier, {}), state="failed",
                       error="The backend no longer knows this job (was it restarted?).")
            self._on_job(identifier, job)
            return
        # Other errors (a busy or restarting backend) are retried on the next tick; say so once.
        self._poll_failures += 1
        if self._poll_failures == LOST_AFTER:
            self.error.emit(ApiError(f"Lost contact with the backend while following jobs ({error.message}); "
                                     "still trying.", error.status, error.details))

    def _announce(self, job: dict) -> None:
        identifier = J.job_id(job)
        label = J.KIND_LABELS.get(J.job_kind(job), "Job")
        if J.succeeded(job):
            callback = self._on_success.pop(identifier, None)
            if callback is not None:
                try:
                    callback(job)
                except Exception as exc:  # noqa: BLE001 — a result we cannot show must not kill polling
                    self.error.emit(exc)
            self.info_message(f"{label} job finished.", Qgis.Success)
        elif J.job_state(job) in J.CANCELLED:
            self._on_success.pop(identifier, None)
            self.info_message(f"{label} job cancelled.", Qgis.Info)
        else:  # failed or interrupted: keep the callback, a resumed job still owes its result
            self.error.emit(ApiError(f"{label} job {J.job_state(job)}: {J.job_error(job) or 'no reason given'}"))
        self.job_finished.emit(job)

    def _fetch_losses(self, force: bool = False) -> None:
        identifier = self.selected_id()
        job = self._jobs.get(identifier or "")
        if job is None or J.job_kind(job) not in ("finetune", "pretrain") or self._losses_in_flight:
            return
        if J.is_terminal(job) and not force:
            return
        self._losses_in_flight = True

        def done(data: Any, i: str = identifier) -> None:
            self._losses_in_flight = False
            if i == self.selected_id():
                self.loss_plot.set_points(J.loss_points(data))

        def failed(_error: ApiError) -> None:
            self._losses_in_flight = False

        self.client.get(f"jobs/{identifier}/losses", on_ok=done, on_error=failed)

    # -- display ----------------------------------------------------------------------------------

    def _ensure_polling(self) -> None:
        active = any(not J.is_terminal(j) for j in self._jobs.values())
        if self.backend is not None and active and not self._timer.isActive():
            self._timer.start()

    def _store(self, job: dict) -> None:
        identifier = J.job_id(job)
        known = self._jobs.get(identifier, {})
        merged = {**known, **job}
        self._jobs[identifier] = merged
        row = self._row_of(identifier)
        if row is None:
            row = 0
            self.table.insertRow(0)
            for column in range(3):
                self.table.setItem(0, column, QTableWidgetItem())
            self.table.item(0, 0).setData(Qt.UserRole, identifier)
        p = J.job_progress(merged)
        kind = J.KIND_LABELS.get(J.job_kind(merged), J.job_kind(merged) or "job")
        self.table.item(row, 0).setText(f"{kind} {identifier[:8]}")
        self.table.item(row, 1).setText(J.job_state(merged) or "?")
        done = 100 if J.succeeded(merged) else (None if p.fraction is None else int(p.fraction * 100))
        self.table.item(row, 2).setText("" if done is None else f"{done} %")
        if identifier == self.selected_id():
            self._show(merged)

    def _row_of(self, identifier: str) -> int | None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.UserRole) == identifier:
                return row
        return None

    def _show_selected(self) -> None:
        job = self._jobs.get(self.selected_id() or "")
        self.loss_plot.clear()
        if job is None:
            self.title.setText("No job selected")
            self.progress.setRange(0, 100)
            self.progress.setValue(0)
            self.progress.setFormat("")
            self.metrics_label.clear()
            self.update_state()
            return
        self._show(job)
        self._fetch_losses(force=True)

    def _show(self, job: dict) -> None:
        kind = J.job_kind(job)
        self.title.setText(f"<b>{J.KIND_LABELS.get(kind, kind or 'Job')}</b> {J.job_id(job)[:8]} — "
                           f"{J.job_state(job) or '?'}")
        p = J.job_progress(job)
        if J.succeeded(job):
            self.progress.setRange(0, 100)
            self.progress.setValue(100)
        elif p.fraction is None:
            if J.is_terminal(job):
                self.progress.setRange(0, 100)
                self.progress.setValue(0)
            else:
                self.progress.setRange(0, 0)  # busy indicator: a stage of unknown length
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(p.fraction * 1000))
        self.progress.setFormat(J.progress_text(job))
        self.progress.setToolTip(p.message or J.job_error(job))
        if p.loss is not None and kind in ("finetune", "pretrain") and not J.is_terminal(job):
            self.loss_plot.add_point(p.step, p.loss)
        metrics = J.job_metrics(job)
        if metrics:
            self.metrics_label.setText(J.metrics_html(metrics))
        elif J.job_state(job) in J.FAILED:
            self.metrics_label.setText(f"<span style='color:#c62828'>{J.job_error(job)}</span>")
        else:
            self.metrics_label.clear()
        self.update_state()
