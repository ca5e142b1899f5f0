"""Routes for what a change would do: a lifecycle event, an HR file, a policy draft.

Does: for those who may make the change and read everything, take the change — an event as
``POST /events`` takes it, a CSV file as ``POST /feeds`` takes it, or policy files by name and
text — and answer what ``provisor what-if`` answers (``provisor.engine.what_if``): the events
and holds, the operations the plan would add and cancel, the revocation debt before and after,
why each person changed would hold what they would. Nothing is recorded or written; uploaded
files live in a temporary folder for the request.
Does not: work anything out itself, or keep anything.
"""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from provisor.api.problems import Problem
from provisor.api.routes.identities import feed_body
from provisor.api.security import EventWriter, Operator, Space, acting, typed_when
from provisor.domain.lifecycle import EventKind
from provisor.domain.roles import Permission, Reach
from provisor.engine import what_if
from provisor.engine.operators import Principal
from provisor.errors import DeniedError
from provisor.sources.hr import FeedMode

router = APIRouter(prefix="/api/v1/what-if", tags=["what-if"])

_POLICY_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.ya?ml")


def _reads_everything(who: Principal) -> None:
    """An answer shows everyone's planned operations, explanations and debt: only for those
    who may read all of it (besides making the change itself)."""
    if who.require(Permission.READ) is not Reach.ALL:
        raise DeniedError(f"{who.name} may read only their own targets: a what-if shows all")


class EventChange(BaseModel):
    kind: EventKind
    identity: str = Field(min_length=1, max_length=128)
    effective: str | None = Field(default=None, description="As for POST /events.")
    changes: dict[str, str | None] = Field(default_factory=dict, description="Attributes.")


class PolicyDraft(BaseModel):
    files: dict[str, str] = Field(
        min_length=1,
        description="Policy files by name (e.g. policy.yaml) and their YAML text: the whole "
        "policy to try in place of the workspace's.",
    )


@router.post("/event", summary="What recording one lifecycle event would do (nothing kept)")
def what_if_event(body: EventChange, who: EventWriter, workspace: Space) -> dict[str, Any]:
    _reads_everything(who)
    effective = typed_when(body.effective, "effective") if body.effective else None
    now = datetime.now(UTC)
    change = what_if.event_change(
        body.identity, body.kind, effective=effective, changes=dict(body.changes), now=now
    )
    with acting(who):
        return what_if.what_if(workspace, now=now, change=change)


@router.post(
    "/import",
    summary="What importing an HR file (CSV body) would do (nothing kept)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
)
async def what_if_import(
    request: Request,
    who: EventWriter,
    workspace: Space,
    feed: str | None = Query(None, description="The feed mapping (default: the first)."),
    mode: FeedMode | None = None,
) -> dict[str, Any]:
    _reads_everything(who)
    content = await feed_body(request, workspace)

    def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="provisor-what-if-") as folder:
            path = Path(folder) / "feed.csv"
            path.write_bytes(content)
            now = datetime.now(UTC)
            change = what_if.import_change(path, feed=feed, mode=mode, now=now)
            with acting(who):
                return what_if.what_if(workspace, now=now, change=change)

    return await run_in_threadpool(run)


@router.post("/policy", summary="What planning with a policy draft would do (nothing kept)")
def what_if_policy(body: PolicyDraft, who: Operator, workspace: Space) -> dict[str, Any]:
    _reads_everything(who)
    for name in body.files:
        if not _POLICY_FILE.fullmatch(name):
            raise Problem(422, f"files: {name!r} is no policy file name such as policy.yaml")
    with tempfile.TemporaryDirectory(prefix="provisor-what-if-") as folder:
        draft = Path(folder) / "policy"
        draft.mkdir()
        for name, text in body.files.items():
            (draft / name).write_text(text, encoding="utf-8")
        with acting(who):
            return what_if.what_if(workspace, now=datetime.now(UTC), policy=draft)
