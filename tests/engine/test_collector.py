"""The cyclic collector is paused for bulk work and restored exactly: across overlapping jobs in
threads, after an exception, and without thawing what the host froze."""

from __future__ import annotations

import gc
import threading

import pytest

from provisor.store.bulk import collector_paused


def test_restored_after_nesting_and_errors() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer job still runs
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_the_host_disabled_stays_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_jobs_in_threads_restart_it_once_all_end() -> None:
    inside = threading.Barrier(2)
    leave = threading.Event()

    def job() -> None:
        with collector_paused():
            inside.wait()
            leave.wait()

    worker = threading.Thread(target=job)
    worker.start()
    with collector_paused():
        inside.wait()
    assert not gc.isenabled()  # the thread's job is still under way
    leave.set()
    worker.join()
    assert gc.isenabled()


def test_objects_the_host_froze_stay_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collector_paused():
            [object() for _ in range(10)]
        # other threads of the test process (servers) may free a few frozen objects meanwhile;
        # an unfreeze would have emptied the permanent generation
        assert gc.get_freeze_count() > frozen * 0.9
    finally:
        gc.unfreeze()
