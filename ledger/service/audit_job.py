"""The ledger's full audit over HTTP, as one background job at a time, its result kept by tree size.

A full audit re-hashes every entry and verifies every signature: ~10 s of one core per million entries
(benchmarks/RESULTS.md). Run per request, a few auditors polling `GET /v1/ledger/audit` kept a core
busy. So a run is a job of the process, and what a caller gets is decided like this:

- the latest result, at once, if it checked the log's current tree size and is younger than
  OMNISTOCK_LEDGER_AUDIT_MAX_AGE_S (rows changed behind the ledger's back keep the size, so a result
  for the same size is re-checked after that age, not trusted forever);
- otherwise the running job, or a new one if none runs, waited for up to OMNISTOCK_LEDGER_AUDIT_WAIT_S:
  its result if it ends by then, else the job's status (202, `Retry-After`, `Location` of the status)
  with the latest result marked `current: false`. Callers arriving meanwhile join the same job.

At most one job runs per process; across replicas a session advisory lock makes a second replica's job
wait ("waiting") until the first is done, so the database and the cores see one audit at a time. A
replica does not see another's results: each keeps its own. `omnistock ledger audit` (the CLI) runs
the audit directly and keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ledger.postgres import repository as repo
from ledger.postgres.backend import PostgresLedger
from ledger.service.use_cases import audit_json, log

ENTRIES_PER_S = 100_000  # a run's speed before one has been timed here (benchmarks/RESULTS.md: 104,204)
MAX_RETRY_AFTER_S = 60  # poll at least once a minute, whatever the estimate
STATUS_PATH = "/v1/ledger/audit/job"
State = Literal["idle", "waiting", "running"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditResult:
    """One finished run: the report of the tree size it checked, and when."""

    report: dict[str, Any]  # use_cases.audit_json
    tree_size: int
    started_at: datetime
    finished_at: datetime

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def as_json(self, current: bool) -> dict[str, Any]:
        return {**self.report, "checked_at": self.started_at, "finished_at": self.finished_at,
                "duration_s": round(self.duration_s, 3), "current": current}


@dataclass
class _Job:
    tree_size: int  # the log's size when it was asked for
    requested_at: datetime
    task: asyncio.Task[AuditResult] | None = None
    state: State = "running"
    started_at: datetime | None = None


@dataclass
class AuditJobs:
    """The audit job of one ledger service process (app[AUDIT] in ledger/service/routes.py)."""

    ledger: PostgresLedger
    max_age_s: float
    wait_s: float
    now: Callable[[], datetime] = utc_now
    runs: int = 0  # jobs started by this process
    last: AuditResult | None = None
    last_error: str | None = None
    _job: _Job | None = field(default=None, repr=False)

    async def log_size(self) -> int:
        async with self.ledger.pool.acquire() as conn:
            return int((await repo.head(conn))["tree_size"])

    def _current(self, result: AuditResult, size: int) -> bool:
        # The run's snapshot may hold entries appended after `size` was read: at least `size` is current.
        return result.tree_size >= size and (self.now() - result.finished_at).total_seconds() < self.max_age_s

    async def result(self) -> tuple[AuditResult | None, bool]:
        """The result for the log as it is now and whether it is current, running (or joining) a job
        for it if needed; (None, False) if the job is still at work after wait_s (the caller answers
        with `status()`). A failed run's error is raised to every caller that waited for it."""
        size = await self.log_size()
        if self.last is not None and self._current(self.last, size):
            return self.last, True
        job = self._job or self._start(size)  # no await since the check: one job, however many callers
        assert job.task is not None
        done, _ = await asyncio.wait({job.task}, timeout=self.wait_s)
        if not done:
            return None, False
        result = job.task.result()
        return result, result.tree_size >= size  # a job joined late may have checked a smaller tree

    def _start(self, size: int) -> _Job:
        job = _Job(tree_size=size, requested_at=self.now())
        job.task = asyncio.create_task(self._run(job), name="ledger-audit")
        job.task.add_done_callback(self._finished)
        self._job = job
        self.runs += 1
        return job

    async def _run(self, job: _Job) -> AuditResult:
        async with self.ledger.pool.acquire() as conn:
            try:
                if not await repo.try_lock_audit(conn):
                    job.state = "waiting"  # for another replica's audit to end
                    await repo.lock_audit(conn)
                try:
                    job.state, job.started_at = "running", self.now()
                    report = await self.ledger.audit()
                finally:
                    await repo.unlock_audit(conn)
            except BaseException:
                # The pool does not reset sessions on release: a connection that may still hold the
                # session lock (cancelled while taking or giving it back) is closed, which frees it.
                conn.terminate()
                raise
        result = AuditResult(audit_json(report), report.tree_size or 0, job.started_at, self.now())
        self.last, self.last_error = result, None
        log.info("ledger audit finished", tree_size=result.tree_size, ok=report.ok,
                 duration_s=round(result.duration_s, 3))
        return result

    def _finished(self, task: asyncio.Task[AuditResult]) -> None:
        self._job = None
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:  # retrieved here too, for when no caller waited
            self.last_error = f"the last run failed ({type(exc).__name__}); the next request starts another"
            log.warning("ledger audit failed", error=repr(exc))

    def retry_after_s(self) -> int:
        """Whole seconds until the running job is likely done: the last run's time scaled to this size."""
        job = self._job
        if job is None:
            return 1
        last = self.last
        if last is not None and last.tree_size:
            estimate = last.duration_s * job.tree_size / last.tree_size
        else:
            estimate = job.tree_size / ENTRIES_PER_S
        elapsed = (self.now() - (job.started_at or job.requested_at)).total_seconds()
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(estimate - elapsed)))

    async def status(self) -> dict[str, Any]:
        """The job's state and the latest result (never starts a run)."""
        job, last = self._job, self.last
        size = await self.log_size() if last is not None else 0
        return {
            "state": job.state if job is not None else "idle",
            "tree_size": job.tree_size if job is not None else None,
            "requested_at": job.requested_at if job is not None else None,
            "started_at": job.started_at if job is not None else None,
            "last": last.as_json(self._current(last, size)) if last is not None else None,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        """Stop a running job (the service is shutting down)."""
        job = self._job
        if job is not None and job.task is not None:
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
