"""Hot version changes under steady load at about half of capacity: no request lost or failed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ladle import InferenceRequest

from .harness import Load, answer, make_config, rows, run_async, serving, write_version

DELAY = 0.004  # seconds per batch: one instance, one row per batch -> at most ~250 requests/s


async def capacity(endpoint, seconds: float = 0.6) -> float:  # type: ignore[no-untyped-def]
    """Closed-loop throughput with enough requests in flight to keep the instance busy."""
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            request = InferenceRequest(endpoint.name, {"x": rows(1)}, deadline=time.monotonic() + 10)
            await answer(request)
            done += 1

    await asyncio.gather(*(client() for _ in range(8)))
    return done / seconds


@run_async
async def test_version_changes_under_load_lose_and_fail_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_version(repo, "fraud", "v1", delay=DELAY)
    models = {"fraud": {"instances": 1, "batcher": {"name": "dynamic", "max_batch_size": 1}}}
    async with serving(make_config(repo, tmp_path / "d.db", models)) as (manager, controller):
        endpoint = manager.endpoint("fraud")
        full = await capacity(endpoint)
        load = Load(endpoint, rate=full / 2, workers=8, keys=True).start()
        pause = 0.3
        await asyncio.sleep(pause)
        write_version(repo, "fraud", "v2", delay=DELAY)
        await controller.deploy("fraud", "v2", traffic=10)  # loads and warms while v1 serves
        await asyncio.sleep(pause)
        await controller.set_traffic("fraud", {"v1": 50, "v2": 50})
        await asyncio.sleep(pause)
        await controller.set_traffic("fraud", {"v2": 100})
        await asyncio.sleep(pause)
        await controller.rollback("fraud")
        await asyncio.sleep(pause)
        await controller.retire("fraud", "v2")  # drained while requests keep coming
        await asyncio.sleep(pause)
        write_version(repo, "fraud", "v3", delay=DELAY)
        await controller.deploy("fraud", "v3")
        await asyncio.sleep(pause)
        await controller.retire("fraud", "v1")
        await asyncio.sleep(pause)
        await load.stop()

        assert load.failures == []
        assert sum(load.served.values()) == load.sent  # every request answered
        assert set(load.served) == {"v1", "v2", "v3"}
        assert load.sent > 0.3 * full * pause * 8  # the load really ran at about half of capacity
        assert sorted(endpoint.versions) == ["v3"]
