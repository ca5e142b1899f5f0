"""The web console at /console: server-rendered pages for operators, owners, approvers and
auditors.

Does: sign a person in with a name and password into a session cookie (HttpOnly, SameSite
Strict, Secure behind HTTPS), hold every form to a CSRF token derived from the session, show
each page only to the roles that reach it (a target owner: their targets' tasks), and call the
engine functions the API calls: the dashboard (revocation debt by class, target and owner,
holds waiting, overdue tasks, failed operations, blind spots), tasks (done with evidence by
one person, verified by another), holds (approved whole or for some identities, or rejected).
Every action is audited as the signed-in person.
Does not: hold rules or queries (the engine and ``provisor.domain.roles`` do); run JavaScript
beyond the browser's own forms.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from provisor.api.security import Tokens, acting
from provisor.domain import days
from provisor.domain.debt import DebtItem
from provisor.domain.roles import Permission, Reach
from provisor.engine import correlate, debt, holds, operations, operators, tasks, views
from provisor.engine.debt_board import View
from provisor.engine.identities import decide_hold
from provisor.engine.leavers import bundle_path, list_bundles
from provisor.engine.operators import Principal
from provisor.engine.workspace import Workspace
from provisor.errors import CredentialsError, DeniedError

COOKIE = "provisor_session"
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def ago(delta: timedelta) -> str:
    """A duration as people read it: "40 s", "3 min", "2 h", "5 days"."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


templates.env.filters["ago"] = ago


def in_zone(value: str | datetime | None, zone: str) -> str:
    """A time as people read it, in ``zone``, saying it (``days.shown``)."""
    return days.shown(value, days.zone(zone))


templates.env.filters["in_zone"] = in_zone
router = APIRouter(prefix="/console", include_in_schema=False)


class SignInNeeded(Exception):
    """No valid session: the person is sent to the sign-in page."""


def csrf_token(secret: str) -> str:
    """The form token of a session: only a page that knows the session can make it."""
    return hmac.new(secret.encode(), b"provisor-console-csrf", hashlib.sha256).hexdigest()[:40]


def _session(request: Request) -> tuple[Principal, str]:
    secret = request.cookies.get(COOKIE, "")
    if not secret:
        raise SignInNeeded
    tokens: Tokens = request.app.state.tokens
    try:
        return tokens.sign_in(secret, operators.digest(secret)), secret
    except CredentialsError:
        raise SignInNeeded from None


def page(permission: Permission) -> Any:
    """A dependency: the signed-in person, when ``permission`` reaches anything for them."""

    def dependency(request: Request) -> Principal:
        who, secret = _session(request)
        who.require(permission)
        request.state.csrf = csrf_token(secret)
        return who

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the route test
    dependency.own = True  # type: ignore[attr-defined]  # pages narrow themselves to a reach
    return dependency


def _checked(request: Request, sent: str) -> None:
    if not hmac.compare_digest(sent or "", getattr(request.state, "csrf", "")):
        raise DeniedError("the form is stale or forged (CSRF token missing or wrong)")


def _render(request: Request, name: str, who: Principal | None, **context: Any) -> HTMLResponse:
    board = getattr(request.app.state, "debt_board", None)
    fresh = int(board.fresh_for.total_seconds() // 60) if board is not None else None
    # times a page shows are in the workspace's zone unless it says whose (``in_zone``)
    home = _workspace(request).config.time.zones().home.key
    shared = {"who": who, "csrf": getattr(request.state, "csrf", ""), "fresh_minutes": fresh}
    return templates.TemplateResponse(request, name, shared | {"home_zone": home} | context)


def _workspace(request: Request) -> Workspace:
    found: Workspace = request.app.state.workspace
    return found


Viewer = Annotated[Principal, Depends(page(Permission.READ))]
TaskWorker = Annotated[Principal, Depends(page(Permission.TASKS))]
Approver = Annotated[Principal, Depends(page(Permission.APPROVE))]
CaseDecider = Annotated[Principal, Depends(page(Permission.CASES))]
EvidenceReader = Annotated[Principal, Depends(page(Permission.EVIDENCE))]
PAGE = 50  # rows a page
HOLD_IDENTITIES = 200  # identities of a hold offered one by one
PageNumber = Annotated[int, Query(alias="page", ge=1, le=100_000)]


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return _render(request, "login.html", None, error=None)


@router.post("/login", response_model=None)
def login(
    request: Request, name: Annotated[str, Form()], password: Annotated[str, Form()]
) -> Response:
    workspace = _workspace(request)
    wait = request.app.state.sign_ins.take(name.casefold())
    if wait:
        return _render(request, "login.html", None, error="Too many attempts; wait a moment.")
    hours = workspace.config.service.session_hours
    with workspace.sessions() as session, session.begin():
        made = operators.sign_in(session, name, password, hours=hours, now=datetime.now(UTC))
        secret = made[0] if made is not None else None
    if secret is None:
        answer = _render(request, "login.html", None, error="The name or the password is wrong.")
        answer.status_code = 401
        return answer
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(
        COOKIE,
        secret,
        max_age=int(hours * 3600),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/console",
    )
    return response


@router.post("/logout", response_model=None)
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    who, secret = _session(request)
    request.state.csrf = csrf_token(secret)
    _checked(request, csrf)
    workspace = _workspace(request)
    with acting(who), workspace.sessions() as session, session.begin():
        operators.revoke_token(session, who.token_id, by=who.name, now=datetime.now(UTC))
    request.app.state.tokens.forget()
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


def _debt_view(request: Request, who: Principal) -> tuple[View, Callable[[DebtItem], bool] | None]:
    """The newest ledger, and which of its items this person sees (None: all of them; a target
    owner: their targets' and those whose revocation owner is their e-mail)."""
    seen: View = request.app.state.debt_board.view()
    if who.reach(Permission.READ) is Reach.ALL:
        return seen, None
    return seen, lambda i: who.answers_for(Permission.READ, i.target, i.owner)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, who: Viewer) -> HTMLResponse:
    workspace = _workspace(request)
    now = datetime.now(UTC)
    seen, keep = _debt_view(request, who)
    everything = keep is None
    owned = None if everything else sorted(who.targets)
    summary = seen.board.summary_for(keep) if seen.board is not None else None
    with workspace.sessions() as session:
        waiting = holds.list_holds(session) if everything else []
        open_tasks = [
            t
            for t in tasks.list_tasks(session, now)
            if who.answers_for(Permission.READ, t.target, t.owner)
        ]
        failed = operations.list_operations(session, status="failed", targets=owned, limit=50)
        shots = debt.snapshots(session, limit=60) if everything else []
    blind = seen.board.blind if everything and seen.board is not None else []
    return _render(
        request,
        "dashboard.html",
        who,
        seen=seen,
        now=now,
        summary=summary,
        visible=summary.items if summary is not None else None,
        holds=waiting,
        tasks=[t for t in open_tasks if t.overdue][:50],
        open_tasks=len(open_tasks),
        failed=failed,
        blind=blind,
        trend=trend(shots),
        shots=shots,
    )


@router.get("/debt", response_class=HTMLResponse)
def debt_page(
    request: Request,
    who: Viewer,
    target: Annotated[str, Query(max_length=128)] = "",
    kind: Annotated[str, Query(alias="class", max_length=32)] = "",
    owner: Annotated[str, Query(max_length=256)] = "",
    q: Annotated[str, Query(max_length=128)] = "",
    show: Annotated[str, Query(pattern="^(all|overdue|unknown)$")] = "all",
    page_number: PageNumber = 1,
) -> HTMLResponse:
    seen, keep = _debt_view(request, who)
    items = seen.board.items_for(keep) if seen.board is not None else []
    wanted = [
        i
        for i in items
        if (not target or i.target == target)
        and (not kind or i.target_class == kind)
        and (not owner or i.owner == owner)
        and (not q or i.identity.casefold().startswith(q.casefold()))
        and (show != "overdue" or i.overdue)
        and (show != "unknown" or not i.known)
    ]
    paged = _paged(wanted, page_number)
    return _render(
        request,
        "debt.html",
        who,
        seen=seen,
        now=datetime.now(UTC),
        visible=len(items),
        items=paged["rows"],
        total=len(wanted),
        targets=sorted({i.target for i in items}),
        filters={"target": target, "class": kind, "owner": owner, "q": q, "show": show},
        page=paged["page"],
        pages=paged["pages"],
    )


def _paged(rows: list[Any], page_number: int) -> dict[str, Any]:
    """One page of ``rows``, with what the pager shows."""
    pages = max(1, -(-len(rows) // PAGE))
    page_number = min(page_number, pages)  # past the end: the last page
    start = (page_number - 1) * PAGE
    return {
        "rows": rows[start : start + PAGE],
        "total": len(rows),
        "page": page_number,
        "pages": pages,
    }


@router.get("/tasks", response_class=HTMLResponse)
def task_list(request: Request, who: TaskWorker, page_number: PageNumber = 1) -> HTMLResponse:
    workspace = _workspace(request)
    with workspace.sessions() as session:
        found = [
            t
            for t in tasks.list_tasks(session, datetime.now(UTC))
            if who.answers_for(Permission.TASKS, t.target, t.owner)
        ]
    return _render(request, "tasks.html", who, paged=_paged(found, page_number))


def _may_work_on(who: Principal, workspace: Workspace, task_id: int) -> None:
    with workspace.sessions() as session:
        who.work_on(Permission.TASKS, *tasks.task_scope(session, task_id))


@router.post("/tasks/{task_id}/done", response_model=None)
def task_done(
    request: Request,
    task_id: int,
    who: TaskWorker,
    evidence: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    _checked(request, csrf)
    workspace = _workspace(request)
    _may_work_on(who, workspace, task_id)
    with acting(who), workspace.sessions() as session, session.begin():
        tasks.complete(session, task_id, by=who.name, evidence=evidence, now=datetime.now(UTC))
    return RedirectResponse("/console/tasks", status_code=303)


@router.post("/tasks/{task_id}/verify", response_model=None)
def task_verify(
    request: Request, task_id: int, who: TaskWorker, csrf: Annotated[str, Form()] = ""
) -> Response:
    _checked(request, csrf)
    workspace = _workspace(request)
    _may_work_on(who, workspace, task_id)
    with acting(who), workspace.sessions() as session, session.begin():
        tasks.verify(session, task_id, by=who.name, now=datetime.now(UTC))
    return RedirectResponse("/console/tasks", status_code=303)


@router.get("/holds", response_class=HTMLResponse)
def hold_list(request: Request, who: Approver) -> HTMLResponse:
    with _workspace(request).sessions() as session:
        found = holds.list_holds(session)
    return _render(request, "holds.html", who, holds=found, shown=HOLD_IDENTITIES)


@router.post("/holds/{hold_id}", response_model=None)
async def hold_decide(request: Request, hold_id: int, who: Approver) -> Response:
    form = await request.form()
    _checked(request, str(form.get("csrf", "")))
    chosen = [str(v) for v in form.getlist("identity")]
    chosen_targets = [str(v) for v in form.getlist("target")]
    approve = form.get("decision") == "approve"
    workspace = _workspace(request)

    def decide() -> None:
        with acting(who), workspace.sessions() as session, session.begin():
            decide_hold(
                session,
                workspace.config,
                hold_id,
                approve=approve,
                only=chosen or None,
                targets=chosen_targets or None,
                now=datetime.now(UTC),
                actor=who.name,
                four_eyes=True,
            )

    await run_in_threadpool(decide)
    return RedirectResponse("/console/holds", status_code=303)


def install(app: FastAPI) -> None:
    """Serve the console: its pages, its stylesheet; without a session, the sign-in page."""
    app.include_router(router)
    app.mount(
        "/console/static",
        StaticFiles(directory=str(Path(__file__).parent / "static")),
        name="console-static",
    )

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded) -> Response:
        return RedirectResponse("/console/login", status_code=303)


@router.get("/identities", response_class=HTMLResponse)
def identity_list(
    request: Request,
    who: Viewer,
    q: str = "",
    state: str = "",
    page_number: PageNumber = 1,
) -> HTMLResponse:
    _all_of_it(who)
    found, total = views.list_identities(
        _workspace(request),
        state=state or None,
        search=q or None,
        limit=PAGE,
        offset=(page_number - 1) * PAGE,
    )
    pages = max(1, -(-total // PAGE))
    return _render(
        request,
        "identities.html",
        who,
        identities=found,
        total=total,
        q=q,
        state=state,
        page=page_number,
        pages=pages,
    )


@router.get("/identities/{identity}", response_class=HTMLResponse)
def identity_page(request: Request, identity: str, who: Viewer) -> HTMLResponse:
    _all_of_it(who)
    workspace = _workspace(request)
    now = datetime.now(UTC)
    shown = views.show_identity(workspace, identity, as_of=None, known_at=None, now=now)
    explained = views.explain_identity(workspace, identity, None, now=now)
    owed = debt.ledger(workspace, now, identity=identity).items
    with workspace.sessions() as session:
        done = operations.list_operations(session, identity=identity, limit=100)
    return _render(
        request,
        "identity.html",
        who,
        person=shown,
        access=explained,
        operations=done,
        owed=owed,
        now=now,
    )


@router.get("/cases", response_class=HTMLResponse)
def case_list(request: Request, who: CaseDecider, page_number: PageNumber = 1) -> HTMLResponse:
    with _workspace(request).sessions() as session:
        found = [
            c for c in correlate.list_cases(session) if who.answers_for(Permission.CASES, c.target)
        ]
    paged = _paged(found, page_number)
    paged["rows"] = [correlate.case_dict(c) for c in paged["rows"]]
    return _render(request, "cases.html", who, paged=paged)


@router.post("/cases/{case_id}", response_model=None)
def case_decide(
    request: Request,
    case_id: int,
    who: CaseDecider,
    decision: Annotated[str, Form()] = "",
    identity: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    _checked(request, csrf)
    workspace = _workspace(request)
    with workspace.sessions() as session:
        target = correlate.case_target(session, case_id)
    who.work_on(Permission.CASES, target)
    now = datetime.now(UTC)
    with acting(who), workspace.sessions() as session, session.begin():
        if decision == "resolve":
            correlate.resolve_case(session, case_id, identity, by=who.name, now=now, note=note)
        else:
            correlate.dismiss_case(session, case_id, by=who.name, now=now, note=note)
    return RedirectResponse("/console/cases", status_code=303)


@router.get("/evidence", response_class=HTMLResponse)
def evidence_list(request: Request, who: EvidenceReader) -> HTMLResponse:
    return _render(request, "evidence.html", who, bundles=list_bundles(_workspace(request)))


@router.get("/evidence/{name}", response_class=FileResponse)
def evidence_bundle(request: Request, name: str, who: EvidenceReader) -> FileResponse:
    path = bundle_path(_workspace(request), name)
    kind = "application/json" if path.suffix == ".json" else "text/html"
    return FileResponse(path, media_type=kind)


def _all_of_it(who: Principal) -> None:
    """Identity pages show everyone: a target owner's reach stops at their targets."""
    if who.reach(Permission.READ) is not Reach.ALL:
        raise DeniedError(f"{who.name} sees only their own targets' tasks, cases and debt")


def trend(shots: list[Any], width: int = 600, height: int = 120) -> str:
    """The debt's recorded totals as the points of an SVG polyline (oldest on the left)."""
    if len(shots) < 2:
        return ""
    top = max(max(s.items for s in shots), 1)
    step = width / (len(shots) - 1)
    return " ".join(
        f"{round(i * step, 1)},{round(height - s.items / top * (height - 10), 1)}"
        for i, s in enumerate(shots)
    )


@router.get("/targets/{target}", response_class=HTMLResponse)
def target_page(
    request: Request,
    target: str,
    who: Viewer,
    kind: Annotated[str, Query(alias="class", max_length=32)] = "",
    page_number: PageNumber = 1,
) -> HTMLResponse:
    who.work_on(Permission.READ, target)
    shown = views.target_accounts(
        _workspace(request),
        target,
        classification=kind or None,
        limit=PAGE,
        offset=(page_number - 1) * PAGE,
    )
    total = shown["counts"].get(kind, 0) if kind else sum(shown["counts"].values())
    pages = max(1, -(-total // PAGE))
    return _render(
        request, "target.html", who, shown=shown, kind=kind, page=page_number, pages=pages
    )
