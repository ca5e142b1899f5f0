"""A workspace: its folder, configuration, database and policy, opened together.

Does: resolve the workspace folder, create or upgrade one (``init_workspace``), open its
database (refusing an out-of-date schema unless asked to create or upgrade it), load and compile
its policy on first use, summarise it (``check_policy``), record each new policy version in
the store and the audit log, and sign the audit chain's head when events were appended
(``checkpoint``; done on ``close``, so after every command).
Does not: implement any lifecycle, planning or import logic; services receive a ``Workspace``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from provisor.config.policy_files import LoadedPolicy, fingerprint, load_policy
from provisor.config.workspace import WorkspaceConfig, load_config, write_starter
from provisor.connectors.registry import settings_problems
from provisor.domain.desired import CompiledPolicy, compile_policy
from provisor.domain.lifecycle import canonical_json
from provisor.domain.transport import cleartext_credentials
from provisor.errors import PolicyError, WorkspaceError
from provisor.evidence import audit, checkpoints
from provisor.store import db
from provisor.store.models import AuditCheckpoint, PolicyVersion

WORKSPACE_ENV = "PROVISOR_WORKSPACE"

log = logging.getLogger(__name__)


def workspace_path(given: Path | None) -> Path:
    """``given``, else ``PROVISOR_WORKSPACE``, else the current folder."""
    if given is not None:
        return given
    configured = os.environ.get(WORKSPACE_ENV)
    return Path(configured) if configured else Path.cwd()


@dataclass
class Workspace:
    path: Path
    config: WorkspaceConfig
    engine: Engine
    sessions: sessionmaker[Session]
    _policy: LoadedPolicy | None = field(default=None, repr=False)
    _compiled: CompiledPolicy | None = field(default=None, repr=False)
    # the schema was found current when opened: the audit chain can be checkpointed
    current: bool = field(default=False, repr=False)
    # the newest policy version this workspace recorded, with its diff (``note_policy_version``)
    policy_change: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        path: Path | None = None,
        *,
        check: bool = True,
        pool: tuple[int, int] = (db.POOL_SIZE, db.POOL_SIZE),
    ) -> Workspace:
        """The workspace in ``path`` (or the one configured); ``pool``: its database
        connections kept open, and more opened when busy."""
        folder = workspace_path(path).resolve()
        config = load_config(folder)
        url = db.database_url(folder)
        if check and url == db.default_url(folder) and not (folder / db.DATABASE_FILE).exists():
            raise WorkspaceError(
                f"no Provisor workspace database in {folder}; run 'provisor init' first"
            )
        engine = db.make_engine(url, pool)
        if check:
            db.check_schema(engine)
        return cls(folder, config, engine, db.session_factory(engine), current=check)

    def close(self) -> None:
        """Sign the audit chain's head if events were appended (a failure to is logged, and
        ``audit verify`` then reports the unprotected tail), and release the database."""
        try:
            if self.current:
                self.checkpoint()
        except Exception as exc:  # never hide the error a command is ending with
            log.warning("audit checkpoint not made: %s", exc)
        finally:
            self.engine.dispose()

    def signer(self, *, create: bool = True) -> checkpoints.Signer:
        """The key that signs audit checkpoints (``audit.signing_key`` or PROVISOR_AUDIT_KEY)."""
        return checkpoints.Signer.load(self.path / self.config.audit.signing_key, create=create)

    def signed_before(self, session: Session | None = None) -> bool:
        """Whether any audit checkpoint was ever made here (the file outside the database, or
        the database's copy; read in ``session`` when given)."""
        if self.checkpoint_file.exists():
            return True
        if session is not None:
            return session.execute(select(AuditCheckpoint.seq).limit(1)).first() is not None
        with self.sessions() as own:
            return own.execute(select(AuditCheckpoint.seq).limit(1)).first() is not None

    @property
    def checkpoint_file(self) -> Path:
        return self.path / self.config.audit.checkpoint_file

    def checkpoint(self, now: datetime | None = None) -> checkpoints.Checkpoint | None:
        """Sign the audit chain's head when events were appended since the last checkpoint,
        writing it outside the database and in it; None when nothing was due (or checkpoints
        are switched off)."""
        settings = self.config.audit
        if not settings.checkpoints:
            return None
        sinks = checkpoints.Sinks(self.checkpoint_file, settings.syslog, settings.http)
        # a key is made only for the first checkpoint ever: once one is signed, a missing key
        # (a shell without PROVISOR_AUDIT_KEY) is an error, never a new key
        signer = self.signer(create=not self.signed_before())
        try:
            with self.sessions() as session, session.begin():
                return checkpoints.checkpoint(session, signer, sinks, now or datetime.now(UTC))
        except IntegrityError:
            return None  # another process signed the same head first

    def _load(self) -> LoadedPolicy:
        return load_policy([self.path / p for p in self.config.policy], settings_problems)

    @property
    def policy(self) -> LoadedPolicy:
        if self._policy is None:
            self._policy = self._load()
        return self._policy

    @property
    def compiled(self) -> CompiledPolicy:
        if self._compiled is None:
            days = self.config.lifecycle.rescind_window_days
            self._compiled = compile_policy(self.policy.policy.kept_for_rescind(days))
        return self._compiled

    def refresh_policy(self) -> bool:
        """Load the policy files again; True when they changed (the new version is in use).

        A policy that no longer loads raises ``PolicyError`` and the version in use stays.
        Files holding the very bytes the version in use was parsed from are not parsed again
        (a version read while a file was being written is read again)."""
        in_use, paths = self._policy, [self.path / p for p in self.config.policy]
        if in_use is not None and fingerprint(paths) == in_use.source:
            return False
        loaded = self._load()
        changed = in_use is not None and loaded.digest != in_use.digest
        # the same policy in other bytes (a comment, a line moved) is kept with its new
        # bytes and places; compiled again only when it changed
        self._policy = loaded
        if in_use is None or changed:
            self._compiled = None
        return changed

    def note_policy_version(
        self, session: Session, entries: list[audit.Entry] | None = None
    ) -> bool:
        """Record the loaded policy if this exact version is new; True when it was. Its audit
        entry goes to ``entries`` when given (for the caller to append with its own, at the
        end of a long transaction: the audit log's head stays free meanwhile)."""
        loaded = self.policy
        known = session.execute(
            select(PolicyVersion.id).where(PolicyVersion.digest == loaded.digest)
        ).scalar_one_or_none()
        if known is not None:
            return False
        previous = session.execute(
            select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1)
        ).scalar_one_or_none()
        document = loaded.policy.model_dump(mode="json", by_alias=True)
        files = [str(f) for f in loaded.files]
        session.add(
            PolicyVersion(
                digest=loaded.digest,
                loaded_at=datetime.now(UTC),
                files=files,
                document=canonical_json(document),
            )
        )
        changes: dict[str, dict[str, list[str]]] = {}
        self.policy_change = {
            "digest": loaded.digest,
            "previous": previous.digest if previous else None,
            "changes": changes,  # filled in below
        }
        old: dict[str, list[dict[str, object]]] = (
            {} if previous is None else json.loads(previous.document)
        )
        for section, items in document.items():
            before = {_item_name(i) for i in old.get(section, [])}
            after = {_item_name(i) for i in items}
            if before != after or (previous is not None and old.get(section) != items):
                changes[section] = {
                    "added": sorted(after - before),
                    "removed": sorted(before - after),
                }
        said = audit.Entry("policy.changed", loaded.digest, self.policy_change | {"files": files})
        if entries is None:
            audit.append(session, [said])
        else:
            entries.append(said)
        return True


def _item_name(item: object) -> str:
    if isinstance(item, dict):
        for key in ("name", "identity"):
            if key in item:
                extra = item.get("role") or item.get("granted") or ""
                return f"{item[key]}{'/' + str(extra) if extra and key == 'identity' else ''}"
    return str(item)


def init_workspace(given: Path | None) -> dict[str, Any]:
    """Create the workspace folder's config, starter policy and database, or upgrade its schema.

    Returns the folder, the schema before (``None`` when new) and after, and the files written."""
    folder = workspace_path(given).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    written = write_starter(folder)
    workspace = Workspace.open(folder, check=False)
    try:
        before, after = db.upgrade(workspace.engine)
        with workspace.sessions() as session, session.begin():
            if before is None:
                audit.record(session, "workspace.created", str(folder), {"schema": after})
            elif before != after:
                audit.record(
                    session, "workspace.upgraded", str(folder), {"from": before, "to": after}
                )
        workspace.current = True  # the schema is current now: its first events get signed
    finally:
        workspace.close()
    return {
        "workspace": str(folder),
        "schema_before": before,
        "schema": after,
        "written": [str(p) for p in written],
    }


def check_policy(given: Path | None) -> dict[str, Any]:
    """Load and validate the workspace's policy files (``PolicyError`` lists every problem) and
    count what they define."""
    folder = workspace_path(given).resolve()
    config = load_config(folder)
    loaded = load_policy([folder / p for p in config.policy], settings_problems)
    policy = loaded.policy
    cleartext = []
    for index, target in enumerate(policy.targets):
        why = cleartext_credentials(target.connection)
        if why:
            where = loaded.source_of(("targets", index, "connection", "url"))
            cleartext.append(f"{where} targets[{index}] {target.name}: {why}")
    kept: list[str] = []
    days = config.lifecycle.rescind_window_days
    for target in policy.short_of_rescind(days):
        index = policy.targets.index(target)
        where = loaded.source_of(("targets", index, "grace_days"))
        kept.append(
            f"{where} targets[{index}] {target.name}: grace_days {target.grace_days} is shorter "
            f"than the rescind window ({days} days, lifecycle.rescind_window_days): a leaver's "
            f"account is kept disabled {days} days, so that a rescind finds it"
        )
    if cleartext and config.require_tls:
        raise PolicyError(
            f"policy is invalid: {len(cleartext)} problem(s) (require_tls is set)",
            problems=cleartext,
        )
    return {
        "warnings": [*cleartext, *kept],
        "digest": loaded.digest,
        "files": [str(f) for f in loaded.files],
        "targets": len(policy.targets),
        "rules": len(policy.rules),
        "roles": len(policy.roles),
        "assignments": len(policy.assignments),
        "exceptions": len(policy.exceptions),
        "sod": len(policy.sod),
    }
