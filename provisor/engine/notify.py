"""Notifications: whoever must act learns that something waits for them.

Does: find what waits — tasks opened, tasks overdue (again every ``overdue_every_hours``),
holds waiting, correlation cases open, revocation debt over its SLA — and who must act on each
(a task's revocation owner when it is an e-mail address and the operators owning its target;
approvers and admins for a hold; the target's owners for a case; each owner with overdue debt,
and the admins); put one notice per thing, person and channel in the outbox, never twice; and
deliver the outbox: e-mail through SMTP, one digest per person once their oldest waiting notice
is ``digest_minutes`` old (0: at once), and webhooks, each notice POSTed as JSON signed with
HMAC-SHA256 (``X-Provisor-Signature: sha256=…``) — or, for a hook with its own
``digest_minutes``, every notice waiting for it in one signed digest per window — retried with
backoff until delivered or ``max_attempts`` is spent. Delivery failures are recorded on the
notice and logged, never raised: a cycle goes on.
Does not: decide what is overdue or owed (tasks, holds, cases and the debt ledger do), or
keep secrets: the SMTP password and webhook secrets are read from environment variables.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import smtplib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx2
from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.config.workspace import NotificationSettings, WebhookSettings
from provisor.engine import correlate, debt, holds, tasks
from provisor.engine.workspace import Workspace
from provisor.store.models import Notice, Operator

log = logging.getLogger(__name__)

KINDS = ("task.opened", "task.overdue", "hold.waiting", "case.opened", "debt.over-sla")


@dataclass(frozen=True)
class Thing:
    """Something waiting for people: what, which one, a line saying it, who must act."""

    kind: str
    key: str
    text: str
    recipients: frozenset[str]
    data: dict[str, Any]


def _email(value: str | None) -> str | None:
    return value if value and "@" in value and " " not in value.strip() else None


class _People:
    """The operators with an e-mail address, by what they answer for."""

    def __init__(self, session: Session) -> None:
        rows = session.execute(
            select(Operator).where(Operator.disabled.is_(False), Operator.email.is_not(None))
        ).scalars()
        self.by_target: dict[str, set[str]] = defaultdict(set)
        self.approvers: set[str] = set()
        self.admins: set[str] = set()
        for operator in rows:
            address = _email(operator.email)
            if address is None:
                continue
            for target in operator.targets or []:
                self.by_target[str(target)].add(address)
            roles = set(operator.roles or [])
            if roles & {"approver", "admin"}:
                self.approvers.add(address)
            if "admin" in roles:
                self.admins.add(address)

    def owners(self, target: str, named: str | None = None) -> frozenset[str]:
        found = set(self.by_target.get(target, set()))
        address = _email(named)
        if address is not None:
            found.add(address)
        return frozenset(found)


def waiting(workspace: Workspace, session: Session, now: datetime) -> list[Thing]:
    """Everything that waits for someone now, with who."""
    settings = workspace.config.notifications
    people = _People(session)
    found: list[Thing] = []
    period = int(now.timestamp() // (settings.overdue_every_hours * 3600))
    for task in tasks.list_tasks(session, now):
        if task.status != "open":
            continue
        whom = people.owners(task.target, task.owner)
        data = {"task": task.id, "target": task.target, "identity": task.identity}
        line = f"Task {task.id} ({task.target}, {task.identity}): {task.instructions}"
        found.append(Thing("task.opened", f"task {task.id}", line, whom, data))
        if task.overdue:
            text = f"{line} is overdue since {task.due.date()}"
            found.append(Thing("task.overdue", f"task {task.id} #{period}", text, whom, data))
    for hold in holds.list_holds(session):
        text = f"Hold {hold['hold']} waits for a decision: {hold['reason']}"
        data = {"hold": hold["hold"], "waiting": hold["waiting"]}
        found.append(
            Thing("hold.waiting", f"hold {hold['hold']}", text, frozenset(people.approvers), data)
        )
    target_owners = {t.name: t.owner for t in workspace.policy.policy.targets}
    for case in correlate.list_cases(session):
        whom = people.owners(case.target, target_owners.get(case.target))
        text = f"Correlation case {case.id} ({case.target}, account {case.account}) waits"
        found.append(Thing("case.opened", f"case {case.id}", text, whom, {"case": case.id}))
    found += _over_sla(workspace, people, now, period, target_owners)
    return [t for t in found if t.recipients]


def _over_sla(
    workspace: Workspace,
    people: _People,
    now: datetime,
    period: int,
    target_owners: dict[str, str],
) -> list[Thing]:
    overdue: dict[str, list[Any]] = defaultdict(list)
    for item in debt.ledger(workspace, now).items:
        if item.overdue:
            overdue[item.target].append(item)
    found = []
    for target, items in sorted(overdue.items()):
        whom = people.owners(target, target_owners.get(target)) | people.admins
        text = f"{len(items)} items of revocation debt in {target} are past their SLA"
        data = {"target": target, "items": len(items)}
        found.append(Thing("debt.over-sla", f"debt {target} #{period}", text, whom, data))
    return found


def queue(
    session: Session, settings: NotificationSettings, things: Iterable[Thing], now: datetime
) -> int:
    """Put each thing in the outbox for each person (e-mail) and webhook, once; how many new."""
    known = {
        (n.channel, n.recipient, n.kind, n.key) for n in session.execute(select(Notice)).scalars()
    }
    added = 0
    for thing in things:
        targets: list[tuple[str, str]] = []
        if settings.smtp is not None:
            targets += [("smtp", r) for r in sorted(thing.recipients)]
        targets += [
            ("webhook", hook.url)
            for hook in settings.webhooks
            if not hook.kinds or thing.kind in hook.kinds
        ]
        for channel, recipient in targets:
            if (channel, recipient, thing.kind, thing.key) in known:
                continue
            known.add((channel, recipient, thing.kind, thing.key))
            session.add(
                Notice(
                    channel=channel,
                    recipient=recipient,
                    kind=thing.kind,
                    key=thing.key,
                    text=thing.text,
                    data=thing.data,
                    status="pending",
                    attempts=0,
                    created_at=now,
                )
            )
            added += 1
    return added


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 5 * 2 ** max(0, attempts - 1)))


def _failed(notice: Notice, error: str, now: datetime, max_attempts: int) -> None:
    notice.attempts += 1
    notice.last_error = error[:2000]
    if notice.attempts >= max_attempts:
        notice.status = "failed"
        log.warning("notice %s to %s given up: %s", notice.id, notice.recipient, error)
    else:
        notice.next_attempt_at = now + _backoff(notice.attempts)


def _due(notice: Notice, now: datetime) -> bool:
    return notice.next_attempt_at is None or notice.next_attempt_at <= now


def deliver_mail(session: Session, settings: NotificationSettings, now: datetime) -> int:
    """Send each person their digest once it is due; how many mails were sent."""
    smtp = settings.smtp
    if smtp is None:
        return 0
    pending: dict[str, list[Notice]] = defaultdict(list)
    for notice in session.execute(
        select(Notice).where(Notice.channel == "smtp", Notice.status == "pending")
    ).scalars():
        if _due(notice, now):
            pending[notice.recipient].append(notice)
    window = timedelta(minutes=settings.digest_minutes)
    sent = 0
    for recipient, notices in sorted(pending.items()):
        oldest = min(n.created_at for n in notices)
        if settings.digest_minutes and now - oldest < window:
            continue  # more may come: one mail for the window
        message = EmailMessage()
        message["From"] = smtp.sender
        message["To"] = recipient
        count = len(notices)
        message["Subject"] = f"Provisor: {count} thing{'s' if count > 1 else ''} wait for you"
        lines = [f"- {n.text}" for n in sorted(notices, key=lambda n: (n.kind, n.id))]
        message.set_content("These wait for you in Provisor:\n\n" + "\n".join(lines) + "\n")
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=30) as client:
                if smtp.starttls:
                    client.starttls()
                password = os.environ.get(smtp.password_env or "", "")
                if smtp.username and password:
                    client.login(smtp.username, password)
                client.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            for notice in notices:
                _failed(notice, f"SMTP: {exc}", now, settings.max_attempts)
            continue
        for notice in notices:
            notice.status, notice.sent_at = "sent", now
        sent += 1
    return sent


def signature(secret: str, body: bytes) -> str:
    """The ``X-Provisor-Signature`` of a webhook body: HMAC-SHA256 with the hook's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


DIGEST_MAX = 500  # notices in one webhook digest; more go in the next POST


def _payload(notice: Notice) -> dict[str, Any]:
    return {
        "id": notice.id,
        "kind": notice.kind,
        "key": notice.key,
        "text": notice.text,
        "data": notice.data,
        "at": notice.created_at.isoformat(),
    }


def _post(hook: WebhookSettings, notices: list[Notice], digest: bool) -> str | None:
    """POST ``notices`` to the hook (one notice, or a digest of them); the error, or None."""
    document: dict[str, Any] = (
        {"digest": True, "count": len(notices), "notices": [_payload(n) for n in notices]}
        if digest
        else _payload(notices[0])
    )
    body = json.dumps(document, sort_keys=True).encode()
    ids = ",".join(str(n.id) for n in notices)
    # one notice: its id; a digest: a digest of its notices' ids (the same set, the same id)
    delivery = ids if not digest else "digest-" + hashlib.sha256(ids.encode()).hexdigest()[:32]
    headers = {"Content-Type": "application/json", "X-Provisor-Delivery": delivery}
    secret = os.environ.get(hook.secret_env or "", "")
    if secret:
        headers["X-Provisor-Signature"] = signature(secret, body)
    try:
        answer = httpx2.post(hook.url, content=body, headers=headers, timeout=15)
    except httpx2.HTTPError as exc:
        return f"webhook: {exc}"
    return None if 200 <= answer.status_code < 300 else f"webhook: HTTP {answer.status_code}"


def deliver_webhooks(session: Session, settings: NotificationSettings, now: datetime) -> int:
    """POST each due webhook notice, or for a hook with a digest every due notice in one POST
    once the oldest is ``digest_minutes`` old; how many notices were delivered."""
    hooks: dict[str, WebhookSettings] = {h.url: h for h in settings.webhooks}
    pending: dict[str, list[Notice]] = defaultdict(list)
    for notice in session.execute(
        select(Notice)
        .where(Notice.channel == "webhook", Notice.status == "pending")
        .order_by(Notice.id)
    ).scalars():
        if notice.recipient in hooks and _due(notice, now):
            pending[notice.recipient].append(notice)
    delivered = 0
    for url, notices in pending.items():
        hook = hooks[url]
        digest = hook.digest_minutes > 0
        if digest and now - min(n.created_at for n in notices) < timedelta(
            minutes=hook.digest_minutes
        ):
            continue  # more may come: one POST for the window
        size = DIGEST_MAX if digest else 1
        for start in range(0, len(notices), size):
            batch = notices[start : start + size]
            error = _post(hook, batch, digest)
            for notice in batch:
                if error is None:
                    notice.status, notice.sent_at = "sent", now
                else:
                    _failed(notice, error, now, settings.max_attempts)
            delivered += len(batch) if error is None else 0
    return delivered


def run(workspace: Workspace, now: datetime) -> dict[str, int]:
    """Queue what waits and deliver what is due (nothing when no channel is configured)."""
    settings = workspace.config.notifications
    if settings.smtp is None and not settings.webhooks:
        return {"queued": 0, "mails": 0, "webhooks": 0}
    with workspace.sessions() as session, session.begin():
        queued = queue(session, settings, waiting(workspace, session, now), now)
    with workspace.sessions() as session, session.begin():
        mails = deliver_mail(session, settings, now)
    with workspace.sessions() as session, session.begin():
        hooks = deliver_webhooks(session, settings, now)
    return {"queued": queued, "mails": mails, "webhooks": hooks}
