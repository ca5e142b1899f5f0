"""Reconciliation: read a target whole (or what changed), judge every account, act per policy.

Does: walk a target's accounts through its connector — every account (``full``), or, when the
connector offers ``list_changed``/``changed_memberships`` and a run has completed before, only
what changed since (``incremental``) — correlating each account to an identity
(``provisor.engine.correlate``), writing the observed-state store in batches stamped with the
run, and keeping a checkpoint (accounts done, the last one) with every batch so a run killed
part way is resumed by the next reconciliation of the target; at the end of a full run, accounts
the listing did not return are gone from the store — unless that is more than half of them,
which fails the run instead. A manual target is reconciled from an import of its own user
export. Then every account of the target is classified (``provisor.engine.assess``)
and the target's remediation policy applied per class — ``auto`` plans the fix in the operation
journal, ``report`` only reports, ``ticket`` opens a work item for the target's owner — except
where a person's mark says otherwise (protected: never touched; decommission-later: reported,
left alone until the mark expires; ignore: not reported); a target that could not be read
cancels and confirms nothing. Each run ends with the revocation debt totals recorded (a
scheduled cycle records them once, after all its targets), and every change is audited in the
transaction that makes it. Scheduled reconciliation runs targets whose ``reconcile_every`` has
elapsed, backing off after a failure.
The package: ``target`` runs one reconciliation and the schedule; ``walk`` stores a listing
and proves a change listing; ``runs`` keeps runs and the observed store; ``remediation`` acts
on the findings.
Does not: write to targets (the runner executes what was planned), or resume inside a
connector's listing: the connector protocol has no resumable cursor, so a resumed run lists
again from the start, comparing again (and writing only where they changed) the accounts the
interrupted run already stored.
"""

from __future__ import annotations

from provisor.engine.reconcile.remediation import remediate
from provisor.engine.reconcile.runs import BATCH, GONE_GUARD_MIN, ReconcileReport, list_runs
from provisor.engine.reconcile.target import (
    reconcile_due,
    reconcile_export,
    reconcile_target,
    reconcile_targets,
)

__all__ = [
    "BATCH",
    "GONE_GUARD_MIN",
    "ReconcileReport",
    "list_runs",
    "reconcile_due",
    "reconcile_export",
    "reconcile_target",
    "reconcile_targets",
    "remediate",
]
