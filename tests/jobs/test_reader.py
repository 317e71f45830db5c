"""The reader process of ``ladle batch``: it prepares exactly what the scorer would prepare itself,
raises the file's errors in the parent, and never outlives or hangs its parent, even one that sends
nothing for long (a job's input reader)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import psutil
import pytest
from jobs_helpers import HERE, silent

from ladle.errors import LadleError, RuntimeFailureError
from ladle.jobs.child import ChildIterator
from ladle.jobs.inputs import PreparedChunk, prepare_chunk
from ladle.jobs.reader import ChunkReader, InlineChunks, open_chunks
from ladle.jobs.records import InputFileError, read_chunks
from ladle.tensors import Signature, TensorSpec

SIGNATURE = Signature(inputs=(TensorSpec("x", "FP32", (-1, 2)),), outputs=(TensorSpec("y", "FP32", (-1, 2)),))


async def read_all(reader: ChunkReader | InlineChunks, signature: Signature | None) -> list[PreparedChunk]:
    reader.begin(signature)
    try:
        return [chunk async for chunk in reader]
    finally:
        reader.close()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie has ended
    except psutil.NoSuchProcess:
        return False


def test_prepares_what_the_scorer_prepares_in_another_process(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"x": [1, 2]}\n{"x": [3\n{"id": "r3", "x": [4, 5]}\n{"x": [1, 2, 3]}\n'
        '{"id": true, "x": [1, 1]}\n{"x": [6, 7]}\n{"x": [8, 9]}\n'
    )
    reader = ChunkReader(source, 3, start=1)
    assert reader.pid is not None and reader.pid != os.getpid()
    got = asyncio.run(read_all(reader, SIGNATURE))
    expected = [
        prepare_chunk(chunk, SIGNATURE, "id") for chunk in read_chunks(source, 3, start=1, input_names=["x"])
    ]
    assert [(c.start, c.count, list(c.good), c.problems, c.ids) for c in got] == [
        (c.start, c.count, list(c.good), c.problems, c.ids) for c in expected
    ]
    assert [c.start for c in got] == [1, 4]
    first, second = got
    assert "not valid JSON" in first.problems[0] and first.ids == [None, "r3", None]
    assert first.arrays is None and first.records == [{"x": [4, 5]}, {"x": [1, 2, 3]}]  # ragged
    assert "'id' must be a string" in second.problems[0]
    assert second.arrays is not None
    np.testing.assert_array_equal(second.arrays["x"], np.array([[6, 7], [8, 9]], np.float32))


def test_a_file_error_is_raised_in_the_parent_after_the_chunks_before_it(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_bytes(b"x\n1\n2\n\xff\n")
    reader = ChunkReader(source, 2, id_field=None)
    chunks: list[PreparedChunk] = []

    async def read() -> None:
        reader.begin(SIGNATURE)
        async for chunk in reader:
            chunks.append(chunk)

    try:
        with pytest.raises(InputFileError, match="line 4: not UTF-8") as raised:
            asyncio.run(read())
    finally:
        reader.close()
    assert isinstance(raised.value, LadleError) and raised.value.details == {"line": 4}
    assert [c.start for c in chunks] == [0]


def test_a_reader_killed_mid_file_is_an_error_not_a_hang(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps({"x": [i, i]}) + b"\n" for i in range(200_000)))
    reader = ChunkReader(source, 64)

    async def read() -> int:
        reader.begin(SIGNATURE)
        count = 0
        async for _ in reader:
            count += 1
            if count == 3:
                assert reader.pid is not None
                os.kill(reader.pid, signal.SIGKILL)
        return count

    try:
        with pytest.raises(RuntimeFailureError, match="input reader process ended"):
            asyncio.run(asyncio.wait_for(read(), 60))
    finally:
        reader.close()


def test_the_reader_does_not_outlive_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps({"x": [i, i]}) + b"\n" for i in range(100_000)))
    script = (
        "import sys, time\n"
        "from ladle.jobs.reader import ChunkReader\n"
        "from ladle.tensors import Signature, TensorSpec\n"
        "if __name__ == '__main__':\n"
        f"    reader = ChunkReader({str(source)!r}, 64)\n"
        "    reader.begin(Signature(inputs=(TensorSpec('x', 'FP32', (-1, 2)),), outputs=()))\n"
        "    print(reader.pid, flush=True)\n"
        "    time.sleep(120)\n"  # never reads: the reader fills the pipe and waits
    )
    assert_reader_dies_with_its_parent(script, within=20)


def test_an_array_file_is_sliced_in_this_process_and_text_is_parsed_in_a_reader(tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", np.arange(10, dtype=np.float32).reshape(5, 2))
    (tmp_path / "in.jsonl").write_text('{"x": [1, 2]}\n')
    inline = open_chunks(tmp_path / "in.npy", 2, start=1)
    assert isinstance(inline, InlineChunks)
    got = asyncio.run(read_all(inline, SIGNATURE))
    assert [(c.start, c.count) for c in got] == [(1, 2), (3, 2)]
    assert got[0].arrays is not None
    np.testing.assert_array_equal(got[0].arrays["x"], np.array([[2, 3], [4, 5]], np.float32))
    reader = open_chunks(tmp_path / "in.jsonl", 2)
    assert isinstance(reader, ChunkReader)
    (chunk,) = asyncio.run(read_all(reader, SIGNATURE))
    assert chunk.arrays is not None and chunk.count == 1


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_an_idle_reader_runs_at_idle_priority_from_its_first_instruction() -> None:
    # Its interpreter's start-up and imports take CPU too, so the parent sets the policy as soon as
    # the process exists, not the child once it runs.
    idle = ChildIterator(silent, 0.0, name="ladle-test-reader", idle=True)
    plain = ChildIterator(silent, 0.0, name="ladle-test-reader")
    try:
        assert idle.pid is not None and plain.pid is not None
        assert os.sched_getscheduler(idle.pid) == os.SCHED_IDLE
        assert os.sched_getscheduler(plain.pid) == os.SCHED_OTHER
    finally:
        idle.close()
        plain.close()


def test_a_silent_reader_exits_as_soon_as_its_parent_is_killed(tmp_path: Path) -> None:
    script = (
        "import time\n"
        "import jobs_helpers\n"
        "from ladle.jobs.child import ChildIterator\n"
        "if __name__ == '__main__':\n"
        "    reader = ChildIterator(jobs_helpers.silent, 120.0, name='ladle-test-reader')\n"
        "    reader.begin()\n"
        "    print(reader.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    # The child sends nothing: only its watch on the parent can end it this soon.
    assert_reader_dies_with_its_parent(script, within=5, env=env)


def assert_reader_dies_with_its_parent(
    script: str, *, within: float, env: dict[str, str] | None = None
) -> None:
    """Run ``script`` (which prints its reader's pid), kill it with SIGKILL; the reader must be gone
    ``within`` seconds."""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.5)
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + within
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the reader process outlived its parent"
    finally:
        parent.kill()
