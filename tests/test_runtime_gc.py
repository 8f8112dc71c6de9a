"""Served processes run the cycle collector rarely, with what start-up built frozen out of its scans."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services import runtime


@pytest.fixture
def collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_gc_freezes_what_start_up_built_and_raises_the_thresholds(collector: None) -> None:
    built_at_start_up = [[index] for index in range(1000)]  # containers: the collector tracks them
    runtime.tune_gc()
    assert gc.get_threshold() == runtime.GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(built_at_start_up)  # never walked by a collection again


def test_cycles_made_after_start_up_are_still_collected_without_being_asked(collector: None) -> None:
    runtime.tune_gc()

    class Node:
        pass

    node = Node()
    node.self = node  # type: ignore[attr-defined]
    ref = weakref.ref(node)
    del node
    assert ref() is not None  # reference counting cannot free a cycle
    allocated = [[index] for index in range(runtime.GC_THRESHOLDS[0] + 1000)]  # past the first threshold
    assert ref() is None and allocated
