"""Metrics read from the store and counted in the process, against a real SCIM server: a
leaver's time to closed access is counted only once every removal is closed, with its proof;
the queue and the debt are what the journal and the ledger say; debt never computed is no
figure at all, not a zero."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from provisor.domain.lifecycle import EventKind
from provisor.engine.metrics import exposition
from provisor.engine.workspace import Workspace
from tests.engine.test_runner import apply, event, people, plan
from tests.engine.test_runner import ws as scim_ws  # noqa: F401 (a fixture)


def samples(ws: Workspace) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition(ws).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


def test_a_leaver_is_counted_once_every_removal_is_closed(scim_ws: Workspace) -> None:  # noqa: F811
    ws = scim_ws
    people(ws, "E1", "E2")
    plan(ws)
    before = samples(ws)
    assert value(before, "provisor_queue_operations", target="app", status="pending") > 0
    assert "provisor_debt_items" not in before  # never computed: no figure, not a zero
    apply(ws)
    event(ws, "E1", EventKind.TERMINATE)
    plan(ws)
    waiting = samples(ws)
    # removals planned, none closed yet: the leaver is not counted
    assert value(waiting, "provisor_leaver_closed_seconds_count") == 0
    apply(ws)
    done = samples(ws)
    # SCIM cannot list sessions: closed, but not all read back gone, and said so
    assert value(done, "provisor_leaver_closed_seconds_count", proof="partly-unverifiable") == 1
    assert value(done, "provisor_leaver_closed_seconds_count", proof="verified") == 0
    assert value(done, "provisor_operations_total", target="app", outcome="verified") >= 3
    assert value(done, "provisor_operation_seconds_count", target="app", kind="disable") >= 1
    # the delete after the grace period is queued; planned in June, it is months old now
    assert value(done, "provisor_queue_operations", target="app", status="pending") == 1
    assert value(done, "provisor_queue_oldest_seconds", target="app") > 86400
