"""Several authoritative sources: one person across feeds, each attribute from the feed that has
precedence for it.

Does: when the workspace names attributes that identify a person across feeds
(``sources.match``), take a snapshot's rows as what that feed says of each person: find the
identity each row is (the feed's id linked before, or the identity this feed made under that
id before feeds were merged, else one identity whose match attributes agree — several, one
already linked to another id of the same feed, or one who has left, is a correlation case for
a person to decide, and the row waits; none is a new identity), keep what each feed last
said (``source_records``), and hand the snapshot diff, in place of the rows, each person as all
feeds that list them say together: every attribute from the first feed in its precedence
(``sources.precedence``: per attribute, ``*`` for the rest, ``status`` for who decides whether
and when someone starts and leaves) that has a value; and for people a feed no longer lists,
the same of the feeds that still do — or, when none does, that they are missing. A manager or
owner named by a feed's own id is named by the identity it is linked to.
Does not: parse feeds (``provisor.sources.hr``), turn records into events or record them
(``provisor.engine.imports``), or merge events files (their rows name identities).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisor.config.workspace import SourceSettings
from provisor.domain.days import Local
from provisor.domain.lifecycle import LifecycleState
from provisor.engine.correlate import FEED_CASE, norm
from provisor.sources.hr import FeedRecord, When
from provisor.store import models
from provisor.store.bulk import chunks

REFERENCES = ("manager", "owner")  # attributes that name another person by the feed's id


def case_target(feed: str) -> str:
    """The target a correlation case about one of ``feed``'s rows names."""
    return f"{FEED_CASE}{feed}"


def when_text(value: When | None) -> str | None:
    """A start or end date as kept: a local time's text, or an instant's ISO text (offset)."""
    if value is None:
        return None
    return value.text if isinstance(value, Local) else value.isoformat()


def when_value(text: str | None) -> When | None:
    if not text:
        return None
    return datetime.fromisoformat(text) if "+" in text or text.endswith("Z") else Local.parse(text)


@dataclass
class _Said:
    """What one feed said of one person (a ``source_records`` row, detached)."""

    feed: str
    attributes: dict[str, Any]
    status: str | None
    start: str | None
    end: str | None


class Merger:
    """Several feeds for one import of ``feed``: resolves its rows to identities, keeps what
    it says, and gives each person as all their feeds say together."""

    def __init__(
        self,
        session: Session,
        settings: SourceSettings,
        feeds: Iterable[str],
        feed: str,
        now: datetime,
    ) -> None:
        self.session, self.settings, self.feed, self.now = session, settings, feed, now
        self.feeds = list(feeds)
        self.warnings: list[str] = []
        self.cases = 0
        self.ids: dict[str, str] = {}  # this feed's id -> identity, for the rows seen
        self._index: dict[tuple[str, str], set[str]] | None = None
        self._linked: dict[str, str] = {}  # identity -> this feed's id linked to it
        self._recorded: set[str] = set()  # identities some feed's record names
        self._live: set[str] = set()  # identities a configured feed lists, not terminated
        self._orders: dict[str, list[str]] = {}

    # --- who each row is ----------------------------------------------------------------

    def merge(self, records: list[FeedRecord], where: str) -> list[FeedRecord]:
        """This feed's ``records`` as the people they are, each as all feeds listing them say."""
        rows = self._rows([r.identity for r in records])
        own = self._untracked([r.identity for r in records if r.identity not in rows])
        touched: dict[str, int] = {}
        for r in records:
            row = rows.get(r.identity)
            if row is not None:
                who: str | None = row.identity
            elif r.identity in own:
                who = r.identity
            else:
                who = self._resolve(r, where)
            if who is None:
                continue
            self.ids[r.identity] = who
            self._keep(r, who, row)
            self._learn(r, who)
            touched[who] = r.line
        self.session.flush()
        return self._combined(touched)

    def _rows(self, ids: list[str]) -> dict[str, models.SourceRecord]:
        """This feed's records of ``ids`` (its own ids), by id."""
        s = models.SourceRecord
        found: dict[str, models.SourceRecord] = {}
        for part in chunks(sorted(set(ids))):
            query = select(s).where(s.feed == self.feed, s.source_id.in_(part))
            found.update((row.source_id, row) for row in self.session.execute(query).scalars())
        return found

    def _untracked(self, ids: list[str]) -> set[str]:
        """Those of ``ids`` that are identities this feed made before feeds were merged (no
        feed's record names them): they stay who they were."""
        self._matches()
        i = models.Identity
        found: set[str] = set()
        for part in chunks(sorted(set(ids))):
            query = select(i.external_id).where(i.external_id.in_(part), i.feed == self.feed)
            found.update(
                w for w in self.session.execute(query).scalars() if w not in self._recorded
            )
        return found

    def _resolve(self, r: FeedRecord, where: str) -> str | None:
        """The identity a row not linked yet is: matched, new, or None (a case is open)."""
        found: set[str] = set()
        said: list[str] = []
        for attr in self.settings.match:
            value = r.attributes.get(attr)
            if value in (None, ""):
                continue
            hits = self._matches().get((attr, norm(value)), set())
            found |= hits
            said += [f"{attr} matches {who}" for who in sorted(hits)]
        if not found:
            return self._new_id(r.identity)
        why = "; ".join(said)
        who = next(iter(found))
        if len(found) > 1:
            self._case(r, where, sorted(found), why)
        elif who not in self._live:  # e-mail addresses are given again: a person decides
            self._case(r, where, [who], f"{why}, who has left: the same person back, or another")
        elif (other := self._linked.get(who)) is not None and other != r.identity:
            self._case(r, where, [who], f"{why}, already linked to {self.feed} id {other}")
        else:
            return who
        return None

    def _matches(self) -> dict[tuple[str, str], set[str]]:
        """Every person's match attributes (normalised) to who they are: as the feeds said
        them, and as the store holds people no feed's record names. Reads who is live and
        who is linked to this feed on the way."""
        if self._index is None:
            index: dict[tuple[str, str], set[str]] = defaultdict(set)
            s, i = models.SourceRecord, models.Identity
            listing: set[str] = set()
            query = select(s.feed, s.identity, s.source_id, s.attributes, s.listed)
            for feed, who, source_id, attrs, listed in self.session.execute(query):
                self._recorded.add(who)
                if feed == self.feed:
                    self._linked[who] = source_id
                if listed and feed in self.feeds:
                    listing.add(who)
                self._index_values(index, who, attrs or {})
            gone = (None, LifecycleState.TERMINATED.value)
            for who, attrs, state in self.session.execute(
                select(i.external_id, i.attributes, i.state)
            ):
                if who not in self._recorded:
                    self._index_values(index, who, attrs or {})
                if state not in gone and (who in listing or who not in self._recorded):
                    self._live.add(who)
            self._index = index
        return self._index

    def _learn(self, r: FeedRecord, who: str) -> None:
        """What the rest of this import matches against: this row's values and its link."""
        self._index_values(self._matches(), who, r.attributes)
        self._linked[who] = r.identity
        self._recorded.add(who)
        if r.status != LifecycleState.TERMINATED.value:
            self._live.add(who)

    def _index_values(
        self, index: dict[tuple[str, str], set[str]], who: str, attrs: Mapping[str, Any]
    ) -> None:
        for attr in self.settings.match:
            value = attrs.get(attr)
            if value not in (None, ""):
                index[attr, norm(value)].add(who)

    def _new_id(self, source_id: str) -> str:
        """A new person's identity id: the feed's own id, unless someone has it already."""
        i = models.Identity
        taken = self.session.execute(
            select(i.external_id).where(i.external_id == source_id)
        ).scalar_one_or_none()
        if taken is None and source_id not in self._recorded:
            return source_id
        return f"{self.feed}:{source_id}"

    def _case(self, r: FeedRecord, where: str, candidates: list[str], why: str) -> None:
        """A person decides who the row is; until then it changes nobody."""
        c = models.CorrelationCase
        target = case_target(self.feed)
        open_ = self.session.execute(
            select(c.id).where(c.target == target, c.account == r.identity, c.status == "open")
        ).scalar_one_or_none()
        if open_ is None:
            self.session.add(
                c(
                    target=target,
                    account=r.identity,
                    user_name=None,
                    candidates=candidates,
                    reason=f"{self.feed} row {r.identity}: {why}",
                    created_at=self.now,
                )
            )
            self.cases += 1
        self.warnings.append(
            f"{where}:{r.line} {r.identity}: {why}; not applied until a person decides "
            "('provisor cases')"
        )
        return None

    # --- what each feed says --------------------------------------------------------------

    def _keep(self, r: FeedRecord, who: str, row: models.SourceRecord | None) -> None:
        s = models.SourceRecord
        values = {
            "identity": who,
            "attributes": dict(r.attributes),
            "status": r.status,
            "start": when_text(r.effective),
            "ends": when_text(r.end),
            "listed": True,
            "seen_at": self.now,
        }
        if row is None:
            self.session.add(s(feed=self.feed, source_id=r.identity, **values))
        else:
            for name, value in values.items():
                setattr(row, name, value)

    def dropped(self, listed: Container[str]) -> tuple[list[FeedRecord], list[str]]:
        """This feed's people its snapshot no longer lists (``listed``: this feed's ids with a
        row, valid or not): each as the feeds that still list them say, and those no feed
        lists any more (missing)."""
        s = models.SourceRecord
        rows = self.session.execute(
            select(s).where(s.feed == self.feed, s.listed.is_(True))
        ).scalars()
        gone: dict[str, int] = {}
        for row in rows:
            if row.source_id in listed:
                continue
            row.listed = False
            row.seen_at = self.now
            gone[row.identity] = 0
        self._matches()
        i = models.Identity
        for who in self.session.execute(  # made by this feed before feeds were merged
            select(i.external_id).where(
                i.feed == self.feed, i.state != LifecycleState.TERMINATED.value
            )
        ).scalars():
            if who not in self._recorded and who not in listed:
                gone[who] = 0
        self.session.flush()
        still = self._combined(gone)
        kept = {r.identity for r in still}
        return still, sorted(who for who in gone if who not in kept)

    # --- all feeds together ---------------------------------------------------------------

    def _combined(self, people: Mapping[str, int]) -> list[FeedRecord]:
        """Each of ``people`` (with the line to report) as the feeds listing them say."""
        said: dict[str, list[_Said]] = defaultdict(list)
        s = models.SourceRecord
        for part in chunks(sorted(people)):
            query = select(s).where(s.identity.in_(part), s.listed.is_(True))
            for row in self.session.execute(query).scalars():
                if row.feed not in self.feeds:
                    continue  # a feed no longer configured says nothing
                said[row.identity].append(
                    _Said(row.feed, dict(row.attributes or {}), row.status, row.start, row.ends)
                )
        names = self._names(said)
        return [
            self._together(who, people[who], said[who], names) for who in people if said.get(who)
        ]

    def _names(self, said: Mapping[str, list[_Said]]) -> dict[tuple[str, str], str]:
        """The identity each feed id a manager or owner attribute names is linked to."""
        wanted = {
            (one.feed, str(one.attributes[attr]))
            for records in said.values()
            for one in records
            for attr in REFERENCES
            if one.attributes.get(attr)
        }
        found: dict[tuple[str, str], str] = {}
        s = models.SourceRecord
        by_feed: dict[str, list[str]] = defaultdict(list)
        for feed, source_id in wanted:
            by_feed[feed].append(source_id)
        for feed, ids in by_feed.items():
            for part in chunks(sorted(ids)):
                query = select(s.source_id, s.identity).where(s.feed == feed, s.source_id.in_(part))
                found.update(((feed, sid), who) for sid, who in self.session.execute(query))
        return found

    def order(self, attribute: str) -> list[str]:
        """The feeds in the order their word counts for ``attribute`` (worked out once)."""
        found = self._orders.get(attribute)
        if found is None:
            listed = self.settings.precedence.get(attribute) or self.settings.precedence.get("*")
            named = list(listed or [])
            found = self._orders[attribute] = named + [f for f in self.feeds if f not in named]
        return found

    def said(self) -> list[str]:
        """The warnings gathered since last asked (each given once)."""
        warnings, self.warnings = self.warnings, []
        return warnings

    def _together(
        self, who: str, line: int, said: list[_Said], names: Mapping[tuple[str, str], str]
    ) -> FeedRecord:
        by_feed = {one.feed: one for one in said}
        attributes: dict[str, Any] = {}
        for attr in sorted({a for one in said for a in one.attributes}):
            for feed in self.order(attr):
                one = by_feed.get(feed)
                value = one.attributes.get(attr) if one is not None else None
                if value not in (None, ""):
                    if attr in REFERENCES and one is not None:
                        value = names.get((one.feed, str(value)), value)
                    attributes[attr] = value
                    break
        deciding = next(by_feed[f] for f in self.order("status") if f in by_feed)
        return FeedRecord(
            line=line,
            identity=who,
            event=None,
            effective=when_value(deciding.start),
            status=deciding.status,
            attributes=attributes,
            end=when_value(deciding.end),
        )

    def identity_of(self, source_id: str) -> str:
        """The identity a row of this import was (its own id when it was not resolved)."""
        return self.ids.get(source_id, source_id)
