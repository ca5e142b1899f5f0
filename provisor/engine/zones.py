"""Dates typed by people, placed in time where the person is.

Does: take the effective date of a hand-typed or API event (a date, a date-time with or without
an offset) to the instant it means (``place``): a date is a day in the person's zone, taken by
the day rules of their feed (a termination at the end of the last working day, a hire at the
start of the first), a date-time without an offset a wall-clock time there, one with an offset
the instant it says; the person's zone is the one the event's own changes name, else the one
their stored attributes name, else the workspace's. Read a date given for the workspace as a
whole (``--now``, ``--as-of``, an API's ``as_of``) in the workspace's zone (``workspace_instant``).
Does not: record anything, or parse feeds (``provisor.sources.hr`` reads their dates).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.config.workspace import WorkspaceConfig, load_config
from provisor.domain import days
from provisor.domain.lifecycle import EventKind
from provisor.errors import LifecycleError
from provisor.sources.hr import FeedMapping
from provisor.store.models import Identity


def feed_rules(config: WorkspaceConfig, feed: str | None) -> tuple[days.DayRule, days.DayRule]:
    """The start and end day rules of ``feed`` (an identity's), else of the default feed."""
    feeds = config.feeds
    mapping = feeds.get(feed or "") or feeds.get("hr") or next(iter(feeds.values()), None)
    mapping = mapping or FeedMapping()
    return days.DayRule.read(mapping.start_at), days.DayRule.read(mapping.end_at)


def place(
    session: Session,
    config: WorkspaceConfig,
    identity: str,
    kind: EventKind,
    value: date | datetime,
    changes: Mapping[str, Any],
) -> days.Placed:
    """The instant ``kind``'s effective ``value`` means for ``identity``, with the local time
    it was given as and the person's zone. A zone attribute in ``changes`` that names no zone
    is refused (``LifecycleError``), as a feed's row would be."""
    attribute = config.time.zone_attribute
    given = changes.get(attribute) if attribute is not None else None
    if given is not None:
        try:
            days.zone(given if isinstance(given, str) else "")
        except days.TimeError as exc:
            raise LifecycleError(f"{identity}: {attribute}: {exc}") from None
    row = session.execute(
        select(Identity.attributes, Identity.feed).where(Identity.external_id == identity)
    ).first()
    stored, feed = (row[0], row[1]) if row is not None else (None, None)
    when = days.read_when(value, days.rule_for(kind, *feed_rules(config, feed)))
    return days.Placed.of(when, config.time.zones().of(changes, stored))


def workspace_instant_at(folder: Path, value: date | datetime) -> datetime:
    """``workspace_instant`` with the settings of the workspace in ``folder``."""
    return workspace_instant(load_config(folder), value)


def workspace_instant(config: WorkspaceConfig, value: date | datetime) -> datetime:
    """A date or date-time given for the workspace as a whole: a date is the start of that day
    in the workspace's zone, a date-time without an offset a wall-clock time there."""
    return days.resolve(days.read_when(value, days.START_OF_DAY), config.time.zones().home)
