"""What a replica set tells its batcher about its instances' runtimes (read per batch)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ladle import ReplicaSet, RuntimeInfo


def _info(max_batch_rows: int | None, pads: bool) -> RuntimeInfo:
    return RuntimeInfo(None, None, max_batch_rows, pads, {})


def test_the_row_cap_and_padding_follow_the_instances_as_they_load_join_and_leave() -> None:
    replicas = ReplicaSet("m", "1")
    assert (replicas.max_batch_rows, replicas.pads) == (None, False)  # no instance: nothing pads
    loading: Any = SimpleNamespace(info=None)
    replicas.add(loading)
    assert (replicas.max_batch_rows, replicas.pads) == (None, False)
    loading.info = _info(4, True)  # warmed up: what it declares counts from the next batch on
    assert (replicas.max_batch_rows, replicas.pads) == (4, True)
    other: Any = SimpleNamespace(info=_info(2, False))
    replicas.add(other)
    assert (replicas.max_batch_rows, replicas.pads) == (2, False)
    replicas.remove(other)
    assert (replicas.max_batch_rows, replicas.pads) == (4, True)
    replicas.add(SimpleNamespace(info=None))  # type: ignore[arg-type]
    assert (replicas.max_batch_rows, replicas.pads) == (4, False)  # one loading: it may not pad
