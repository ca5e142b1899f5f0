"""Background jobs: long work asked for through the service, run by the runner's cycle.

Does: keep an uploaded HR feed in the workspace (``uploads/``, readable by its owner only)
before anything is promised about it; queue a job (a feed import, a reconciliation, a leaver's
evidence bundle) with who asked; run queued jobs oldest first through the same engine
functions the command line calls, recording each job's result or error; put back in the queue
a job a stopped process left running, known by its silent heartbeat (each kind is safe to run
again: an import skips events it has, a reconciliation resumes from its checkpoint); list jobs
and show one.
Does not: schedule itself (``provisor.engine.cycle`` runs queued jobs at the start of every
cycle), or know HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from provisor.engine import reconcile
from provisor.engine.imports import feed_mapping, import_feed
from provisor.engine.leavers import verify_leaver
from provisor.engine.workspace import Workspace
from provisor.errors import LifecycleError, NotFoundError, ProvisorError
from provisor.evidence import audit
from provisor.sources.hr import FeedMode
from provisor.store.db import changed
from provisor.store.models import Job

log = logging.getLogger(__name__)

UPLOADS = "uploads"
# a running job's runner says it is alive this often; silent for STALE, the job is taken back
HEARTBEAT = timedelta(seconds=10)
STALE = timedelta(seconds=60)
KINDS = ("import", "reconcile", "verify-leaver")


def keep_upload(workspace: Workspace, name: str, content: bytes, now: datetime) -> Path:
    """Write an uploaded feed into the workspace's ``uploads/`` (mode 0600), under a name
    that cannot clash or climb out of the folder; returns its path."""
    folder = workspace.path / UPLOADS
    folder.mkdir(mode=0o700, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)[:80]
    digest = hashlib.sha256(content).hexdigest()[:12]
    path = folder / f"{now.strftime('%Y%m%dT%H%M%S%f')}-{digest}-{safe or 'feed.csv'}"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def enqueue(session: Session, kind: str, params: dict[str, Any], *, by: str, now: datetime) -> Job:
    """Queue a job; audited with who asked."""
    if kind not in KINDS:
        raise LifecycleError(f"unknown job kind {kind!r}; kinds are {', '.join(KINDS)}")
    job = Job(kind=kind, params=params, status="queued", requested_by=by, created_at=now)
    session.add(job)
    session.flush()
    audit.record(session, "job.queued", f"job {job.id}", {"kind": kind, "params": params}, actor=by)
    return job


def queue_import(
    workspace: Workspace,
    name: str,
    content: bytes,
    *,
    feed: str | None,
    mode: FeedMode | None,
    by: str,
    now: datetime,
) -> Job:
    """Keep an uploaded feed and queue its import (an unknown feed is refused first)."""
    feed_name, _ = feed_mapping(workspace, feed)
    path = keep_upload(workspace, name, content, now)
    params = {"file": str(path), "feed": feed_name, "mode": mode.value if mode else None}
    with workspace.sessions() as session, session.begin():
        return _detached(enqueue(session, "import", params, by=by, now=now))


def _detached(job: Job) -> Job:
    job.id  # noqa: B018 (load the id before the session closes)
    return job


def job_dict(job: Job) -> dict[str, Any]:
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": job.id,
        "kind": job.kind,
        "params": job.params,
        "status": job.status,
        "requested_by": job.requested_by,
        "created_at": when(job.created_at),
        "started_at": when(job.started_at),
        "finished_at": when(job.finished_at),
        "result": job.result,
        "error": job.error,
    }


def get_job(session: Session, job_id: int) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job_dict(job)


def list_jobs(
    session: Session, *, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    query = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(Job.status == status)
    return [job_dict(j) for j in session.execute(query).scalars()]


def recover(session: Session, now: datetime) -> int:
    """Queue again the jobs a stopped process left running — those whose runner has not
    said it is alive for ``STALE`` (a job another process is running keeps its heartbeat
    fresh); how many."""
    result = session.execute(
        update(Job)
        .where(
            Job.status == "running",
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - STALE),
        )
        .values(status="queued", started_at=None, error="interrupted; queued again")
    )
    count = changed(result)
    if count:
        audit.record(session, "job.requeued", "jobs", {"count": count, "at": now.isoformat()})
    return count


def _claim(workspace: Workspace, now: datetime) -> Job | None:
    with workspace.sessions() as session, session.begin():
        job = session.execute(
            select(Job).where(Job.status == "queued").order_by(Job.id).limit(1)
        ).scalar_one_or_none()
        if job is None:
            return None
        claimed = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "queued")
            .values(status="running", started_at=now, heartbeat_at=now)
        )
        if not changed(claimed):
            return None  # another runner took it
        session.refresh(job)
        return _detached(job)


def run_queued(workspace: Workspace, clock: Callable[[], datetime], *, limit: int = 10) -> int:
    """Run up to ``limit`` queued jobs, oldest first; how many ran. A job's failure is recorded
    on the job (and logged), never raised."""
    ran = 0
    while ran < limit:
        job = _claim(workspace, clock())
        if job is None:
            break
        ran += 1
        status, result, error = "succeeded", None, None
        try:
            with audit.acting_as(job.requested_by), _heartbeat(workspace, job.id):
                result = _run(workspace, job, clock)
        except (ProvisorError, SQLAlchemyError, OSError) as exc:
            status, error = "failed", str(exc)
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc)
        except Exception as exc:  # a bug or a library's surprise: the job says so, work goes on
            status, error = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
            log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
        with workspace.sessions() as session, session.begin():
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(status=status, finished_at=clock(), result=result, error=error)
            )
            audit.record(
                session,
                f"job.{status}",
                f"job {job.id}",
                {"kind": job.kind, "error": error},
                actor=job.requested_by,
            )
    return ran


@contextmanager
def _heartbeat(workspace: Workspace, job_id: int) -> Iterator[None]:
    """While the block runs, stamp the job's heartbeat every ``HEARTBEAT``."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT.total_seconds()):
            try:
                with workspace.sessions() as session, session.begin():
                    session.execute(
                        update(Job).where(Job.id == job_id).values(heartbeat_at=datetime.now(UTC))
                    )
            except SQLAlchemyError as exc:  # the next beat tries again
                log.warning("job %s heartbeat not written: %s", job_id, exc)

    beating = threading.Thread(target=beat, name=f"job-{job_id}-heartbeat", daemon=True)
    beating.start()
    try:
        yield
    finally:
        done.set()
        beating.join(5)


def _run(workspace: Workspace, job: Job, clock: Callable[[], datetime]) -> dict[str, Any]:
    params = job.params
    if job.kind == "import":
        mode = FeedMode(params["mode"]) if params.get("mode") else None
        report = import_feed(
            workspace, Path(params["file"]), feed=params.get("feed"), mode=mode, now=clock()
        )
        return report.as_dict()
    if job.kind == "reconcile":
        reports = reconcile.reconcile_targets(
            workspace,
            params.get("target"),
            now=clock(),
            full=bool(params.get("full", True)),
            remediate_now=not params.get("report_only", False),
        )
        return {"reports": [r.as_dict() for r in reports]}
    written = verify_leaver(workspace, params["identity"], now=clock, out_dir=None)
    return written.as_dict()
