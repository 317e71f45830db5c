"""The dedicated thread executors make their blocking calls on (ladle.DedicatedThread)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ladle import DedicatedThread


def test_calls_run_in_order_on_one_thread_of_their_own_and_answer_on_the_loop() -> None:
    async def main() -> tuple[list[int], set[int], int]:
        thread = DedicatedThread("ladle-test")
        seen: list[int] = []
        idents: set[int] = set()

        def work(index: int) -> int:
            idents.add(threading.get_ident())
            # earlier calls take longer: several threads would finish them out of order
            time.sleep(0.001 * (5 - index))
            seen.append(index)
            return index * 10

        results = await asyncio.gather(*(thread.call(work, i) for i in range(5)))
        thread.close(wait=True)
        return [*results, *seen], idents, threading.get_ident()

    answers, idents, loop_ident = asyncio.run(main())
    assert answers == [0, 10, 20, 30, 40, 0, 1, 2, 3, 4]
    assert len(idents) == 1 and loop_ident not in idents


def test_a_failing_call_raises_its_own_error_and_the_thread_keeps_serving() -> None:
    async def main() -> str:
        thread = DedicatedThread("ladle-test")

        def fail() -> None:
            raise KeyError("bad item")

        with pytest.raises(KeyError, match="bad item"):
            await thread.call(fail)
        answer = await thread.call(str.upper, "still here")
        thread.close(wait=True)
        return answer

    assert asyncio.run(main()) == "STILL HERE"


def test_a_cancelled_caller_leaves_the_thread_serving_and_close_ends_it() -> None:
    async def main() -> tuple[bool, int, bool]:
        thread = DedicatedThread("ladle-test-close")
        started = threading.Event()

        def slow() -> int:
            started.set()
            time.sleep(0.2)
            return 1

        future = thread.call(slow)
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        future.cancel()  # the caller gave up; the call still finishes, and its answer is dropped
        after = await thread.call(len, "abc")
        thread.close(wait=True)
        alive = any(t.name == "ladle-test-close" for t in threading.enumerate())
        return future.cancelled(), after, alive

    assert asyncio.run(main()) == (True, 3, False)


def test_a_call_that_outlives_its_loop_does_not_fail_the_thread() -> None:
    thread = DedicatedThread("ladle-test")
    release = threading.Event()

    async def start() -> None:
        thread.call(release.wait)

    asyncio.run(start())  # the loop closes while the call still runs
    release.set()

    async def again() -> int:
        return await asyncio.wait_for(thread.call(abs, -7), 5)  # a dead thread never answers

    assert asyncio.run(again()) == 7
    thread.close(wait=True)
