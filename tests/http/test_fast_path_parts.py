"""The fast path's parts on their own: route matching (cached by path) and the disconnect watch."""

from __future__ import annotations

import asyncio
from typing import Any

from ladle.envelope import CancelSignal
from ladle.http.disconnect import DisconnectWatch
from ladle.http.fast_path import FastRoutes


async def _v2(*args: Any) -> Any:
    return 200, b"", {}


async def _ladle(*args: Any) -> Any:
    return 200, b"", {}


def test_routes_match_by_path_and_a_route_added_later_is_found() -> None:
    routes = FastRoutes()
    routes.add("/v2/models/{model}/infer", _v2, "v2")
    assert routes.match("/v2/models/a/infer") == (_v2, "a", None, "v2")
    assert routes.match("/v2/models/b/infer") == (_v2, "b", None, "v2")
    assert routes.match("/v2/models/a/infer") == (_v2, "a", None, "v2")  # asked again: same answer
    assert routes.match("/api/v1/models/a/predict") is None
    routes.add("/api/v1/models/{model}/predict", _ladle, "ladle")  # a miss seen before is not kept
    assert routes.match("/api/v1/models/a/predict") == (_ladle, "a", None, "ladle")


def test_made_up_paths_do_not_grow_the_route_cache_without_limit() -> None:
    routes = FastRoutes()
    routes.add("/v2/models/{model}/infer", _v2, "v2")
    for i in range(10_000):
        assert routes.match(f"/v2/models/m{i}/infer") == (_v2, f"m{i}", None, "v2")
    assert len(routes._matched) <= 4096


def _waiting_receive() -> Any:
    """A receive() that blocks until ``receive.gone`` is set, then reports the client gone."""
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    receive.gone = gone  # type: ignore[attr-defined]
    return receive


def test_an_answered_request_leaves_the_watch_whichever_generation_it_is_in() -> None:
    async def scenario() -> None:
        watch = DisconnectWatch(tick=0.01)
        quick, slow = CancelSignal(), CancelSignal()
        quick_generation = watch.track(_waiting_receive(), quick)
        slow_generation = watch.track(_waiting_receive(), slow)
        del quick_generation[quick]  # answered at once: no task, no entry
        await asyncio.sleep(0.015)  # one tick: slow is in the old generation now
        assert slow in watch._old and not watch._tasks
        del slow_generation[slow]  # answered there
        assert slow not in watch._old and quick not in watch._young
        await asyncio.sleep(0.03)
        assert not watch._tasks and not watch._young and not watch._old

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_request_unanswered_after_two_ticks_is_abandoned_when_its_client_goes_away() -> None:
    async def scenario() -> None:
        watch = DisconnectWatch(tick=0.01)
        cancel = CancelSignal()
        receive = _waiting_receive()
        watch.track(receive, cancel)
        await asyncio.sleep(0.05)  # two ticks: a task now waits for the disconnect
        assert len(watch._tasks) == 1 and not cancel.abandoned
        receive.gone.set()
        for _ in range(100):
            if cancel.abandoned:
                break
            await asyncio.sleep(0.01)
        assert cancel.abandoned

    asyncio.run(asyncio.wait_for(scenario(), 10))
