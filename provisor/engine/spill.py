"""A snapshot feed read once and kept on disk until it is compared with the store; a large
CSV one read on every core.

Does: parse a snapshot file (``read_snapshot``) into valid records kept on disk a batch at a
time (``Spill``, in the plainest of formats) with what the whole-file checks need of each
(``References``), so memory stays bounded whatever the file's size; a CSV text of several
``PART_CHARS`` cut into parts at line breaks outside quoted values (``hr.csv_parts``) read
beside each other, one in this process and each other in a process of its own, and put
together exactly as one reading of the whole would give them (``hr.combine``: ids on
several rows across parts refused on each, problems in line order; the same batches). When
a part meets a record running over several lines, or one that cannot be read, where the
parts were cut cannot be trusted, and the whole text is read again at once here; likewise
when a part's process cannot start or fails. A part's text waits in a private folder
(``tempfile``: only this user can read it) until its reader has read it, what the reader
found until it is taken in, its rows until the import ends (read through a handle kept
open, the file itself removed); the folder goes when the import ends.
Does not: compare records with the store or record anything (``imports``); parse values
itself (``provisor.sources.hr``).
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Container, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from provisor.domain.days import Local
from provisor.engine.references import References
from provisor.errors import FeedError
from provisor.sources.hr import (
    Cuts,
    FeedMapping,
    FeedPart,
    FeedRecord,
    ParsedFeed,
    When,
    combine,
    csv_parts,
    feed_text,
    new_record,
    parse_csv_part,
    parse_text,
    refuse_empty,
)

log = logging.getLogger(__name__)

# the least text a part is worth a process for (about 70,000 rows of an HR export): below
# it, starting the process costs more than it saves
PART_CHARS = 8_000_000
MAX_PARTS = 8
# what the first part reads more than the others, while they start (a third of a second) and
# hand back what they found (a tenth of their time): so that all end together
LEAD_CHARS = 3_000_000
LEAD_SHARE = 12

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _code(value: When) -> int | tuple[int, int]:
    """A date as a plain value, exactly: an instant as whole microseconds since the epoch, a
    local time as its day's ordinal and its seconds."""
    if isinstance(value, Local):
        return (value.day.toordinal(), value.seconds)
    return (value - _EPOCH) // _MICROSECOND


def _decode(code: int | tuple[int, int]) -> When:
    if isinstance(code, tuple):
        return Local(date.fromordinal(code[0]), code[1])
    return _EPOCH + code * _MICROSECOND


@dataclass
class _Part:
    """Another process's part of the records: its file, how many batches it holds."""

    disk: IO[bytes]
    batches: int


class Spill:
    """A snapshot's valid records, kept on disk a batch at a time while the file is read (they
    cannot be compared with the store before the whole file is read: an id may turn up again
    on a later row), with what the whole-file checks need of each (``References``). Parts
    read by other processes are taken in after this one's own (``take_in``)."""

    def __init__(self, file: str, disk: IO[bytes] | None = None) -> None:
        self.file = file
        self.references = References(file)
        self._disk = disk or tempfile.TemporaryFile(prefix="provisor-import-")  # noqa: SIM115
        self.written = 0  # batches
        self._codes: dict[int, tuple[When, Any]] = {}
        self._parts: list[_Part] = []
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def add(self, records: list[FeedRecord]) -> None:
        self.references.add(records)
        # a file has few distinct dates, each one object (the parser's): coded once, by id
        codes = self._codes

        def coded(value: When | None) -> Any:
            if value is None:
                return None
            known = codes.get(id(value))
            if known is None:
                known = codes[id(value)] = (value, _code(value))  # the value kept: ids stay
            return known[1]

        rows = [
            (r.line, r.identity, coded(r.effective), r.status, r.attributes, coded(r.end))
            for r in records
        ]
        # plain values only, the fastest of the formats; whole batches, as bytes (marshal
        # reading from a file object goes a few bytes at a time: ten times slower)
        data = marshal.dumps(rows)
        self._disk.write(len(data).to_bytes(8, "little"))
        self._disk.write(data)
        self.written += 1

    def folder(self) -> str:
        """A private folder for other processes' parts, removed with the spill."""
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="provisor-import-")
        return self._folder.name

    @property
    def taken_in(self) -> int:
        """How many parts other processes read."""
        return len(self._parts)

    def take_in(self, path: str, batches: int, references: References) -> None:
        """Another process's part (``batches`` in the file at ``path``, which is then
        removed: it is read through its open handle), of rows after this one's own."""
        self._parts.append(_Part(open(path, "rb"), batches))  # noqa: SIM115 (closed by close)
        os.unlink(path)
        self.references.absorb(references)

    def batches(self, rejected: Container[str], size: int) -> Iterator[list[FeedRecord]]:
        """The records again, ``size`` at a time as they were read, but those of
        ``rejected`` ids; the batches are the same whether the file was read in parts or not
        (what an import reports comes batch by batch)."""
        when: dict[Any, When | None] = {None: None}
        waiting: list[tuple[Any, ...]] = []
        for rows in self._stored():
            waiting += rows
            while len(waiting) >= size:
                yield _records(waiting[:size], rejected, when)
                del waiting[:size]
        if waiting:
            yield _records(waiting, rejected, when)

    def _stored(self) -> Iterator[list[tuple[Any, ...]]]:
        yield from _read(self._disk, self.written)
        for part in self._parts:
            yield from _read(part.disk, part.batches)

    def close(self) -> None:
        self._disk.close()
        for part in self._parts:
            part.disk.close()
        if self._folder is not None:
            self._folder.cleanup()


def _read(disk: IO[bytes], count: int) -> Iterator[list[tuple[Any, ...]]]:
    disk.seek(0)
    for _ in range(count):
        size = int.from_bytes(disk.read(8), "little")
        yield marshal.loads(disk.read(size))  # written by a Spill, for this import


def _records(
    rows: list[tuple[Any, ...]], rejected: Container[str], when: dict[Any, When | None]
) -> list[FeedRecord]:
    records = []
    for line, identity, effective, status, attributes, end in rows:
        if identity in rejected:
            continue
        for code in (effective, end):
            if code not in when:
                when[code] = _decode(code)
        records.append(
            new_record(line, identity, None, when[effective], status, attributes, None, when[end])
        )
    return records


def read_snapshot(
    path: Path, mapping: FeedMapping, *, batch: int, zone_attribute: str | None
) -> tuple[ParsedFeed, Spill]:
    """The snapshot at ``path`` parsed, its valid records in the spill returned (closed by
    the caller); a large CSV one read in parts on several cores."""
    file, fmt, text = feed_text(path, mapping)
    spill = Spill(file)
    try:
        count = min(_cores(), MAX_PARTS, len(text) // PART_CHARS)
        cuts = None
        if fmt == "csv" and count > 1:
            lead = LEAD_CHARS + len(text) // (count * LEAD_SHARE)
            cuts = csv_parts(text, count, mapping.delimiter, lead)
        parts = _in_parts(text, cuts, mapping, spill, batch, zone_attribute) if cuts else None
        if parts is not None:
            refuse_empty(file, mapping, sum(part.rows_read for part in parts))
            return combine(file, mapping, parts), spill
        if cuts is not None:  # read again at once: what the parts wrote is dropped
            spill.close()
            spill = Spill(file)
        parsed = parse_text(
            text,
            fmt,
            mapping,
            file=file,
            sink=spill.add,
            batch=batch,
            zone_attribute=zone_attribute,
        )
        return parsed, spill
    except BaseException:
        spill.close()
        raise


def _in_parts(
    text: str,
    cuts: Cuts,
    mapping: FeedMapping,
    spill: Spill,
    batch: int,
    zone_attribute: str | None,
) -> list[FeedPart] | None:
    """The text read in parts: the first here, into ``spill``, each other one by a process
    of its own (``python -m provisor.engine.spill``, with this process's module path); None
    when a part's reader found that where the parts meet cannot be trusted, refused the file
    (the whole text read at once then says why, at the right line), could not start or
    failed. A reader still running when this ends is stopped."""
    folder = Path(spill.folder())
    ends = [at for at, _ in cuts.parts] + [len(text)]
    readers: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for k, (at, shift) in enumerate(cuts.parts):
            ask = _Ask(spill.file, mapping, shift, cuts.lines, batch, zone_attribute)
            reader = _start(folder / str(k), cuts.header + text[at : ends[k + 1]], ask)
            if reader is None:
                return None
            readers.append((reader, folder / str(k)))
        here = _Ask(spill.file, mapping, 0, 0, batch, zone_attribute)
        first = _parse_part(text[: cuts.parts[0][0]], here, spill)
        if first is None or first.irregular:
            return None
        parts = [first]
        for reader, stem in readers:
            found = _answer(reader, stem)
            if found is None or found.part.irregular:
                return None
            spill.take_in(found.spill, found.batches, found.references)
            parts.append(found.part)
        return parts
    finally:
        for reader, _ in readers:
            if reader.poll() is None:
                reader.kill()
            reader.wait()
            if reader.stderr is not None:
                reader.stderr.close()


@dataclass
class _Ask:
    """What a part's reader is asked (beside the part's text)."""

    file: str
    mapping: FeedMapping
    shift: int  # how far down in the file its rows are, after its header's lines
    above: int  # its header's lines
    batch: int
    zone_attribute: str | None


@dataclass
class _Found:
    """What a part's reader found."""

    part: FeedPart
    references: References
    spill: str
    batches: int


def _start(stem: Path, text: str, ask: _Ask) -> subprocess.Popen[bytes] | None:
    """A reader of the part ``text`` started; None when it cannot be."""
    # the running interpreter and every folder its modules come from, the working folder
    # not put first (-P): the reader runs the code this process runs
    command = [sys.executable, "-P", "-m", __name__, str(stem)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    try:
        stem.with_suffix(".csv").write_bytes(text.encode("utf-8"))
        stem.with_suffix(".ask").write_bytes(pickle.dumps(ask))
        return subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
    except OSError:
        log.warning("cannot start a reader of a part of the feed", exc_info=True)
        return None


def _answer(reader: subprocess.Popen[bytes], stem: Path) -> _Found | None:
    """A part reader's answer once it ends; None when it refused the file or failed."""
    _, said = reader.communicate()
    try:
        if reader.returncode == 0:
            answer: _Found | None = pickle.loads(stem.with_suffix(".found").read_bytes())
            return answer
    except (OSError, EOFError, pickle.UnpicklingError):
        pass
    finally:
        stem.with_suffix(".found").unlink(missing_ok=True)
    said_last = said[-2000:].decode("utf-8", "replace")
    log.warning("a part of the feed could not be read beside the rest: %s", said_last)
    return None


def _parse_part(text: str, ask: _Ask, spill: Spill) -> FeedPart | None:
    """A part parsed as ``ask`` says, its records into ``spill``; None when the file is
    refused."""
    try:
        return parse_csv_part(
            text,
            ask.mapping,
            file=ask.file,
            shift=ask.shift,
            sink=spill.add,
            batch=ask.batch,
            zone_attribute=ask.zone_attribute,
        )
    except FeedError:
        return None


def _read_part(stem: Path) -> None:
    """In a process of its own: the part in ``stem``.csv parsed as ``stem``.ask says, its
    records into ``stem``.spill, what it found into ``stem``.found (None when the file is
    refused). The header's warnings are the first part's to give."""
    gc.disable()  # a short-lived process making millions of objects, none in a cycle
    ask: _Ask = pickle.loads(stem.with_suffix(".ask").read_bytes())  # written by read_snapshot
    text = stem.with_suffix(".csv").read_bytes().decode("utf-8")
    stem.with_suffix(".csv").unlink()  # the people in it kept no longer than needed
    found: _Found | None = None
    with stem.with_suffix(".spill").open("wb") as disk:
        spill = Spill(ask.file, disk)
        part = _parse_part(text, ask, spill)
    if part is not None:
        part.warnings = [w for w in part.warnings if w.line > ask.above]
        found = _Found(part, spill.references, disk.name, spill.written)
    stem.with_suffix(".found").write_bytes(pickle.dumps(found))


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


if __name__ == "__main__":  # a part's reader: its classes pickled as the module's own
    from provisor.engine import spill

    spill._read_part(Path(sys.argv[1]))
