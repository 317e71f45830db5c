"""The threaded generation engine's asyncio API and the continuous batcher plugin around it."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import numpy as np
import pytest

from ladle import InferenceRequest, Instance, PluginHost, ReplicaSet, RuntimeSpec, ThreadExecutor
from ladle.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidInputError,
    InvalidRequestError,
    ModelNotReadyError,
    ServerBusyError,
)
from ladle.generation import GenerationPayload, GenerationStream, SamplingParams
from ladle.plugins.batchers.continuous.batcher import ContinuousBatcher
from ladle.plugins.batchers.continuous.engine import GenerationEngine
from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime

from .support import generate_alone, load_runtime, run_async

PROMPTS = [
    "The quick brown fox",
    "A model server answers requests while new ones keep arriving, and",
    "Hello",
    "Numbers like 12, 345 and 6789 appear in text too. Continuous batching lets sequences join",
]


@pytest.fixture(scope="module")
def runtime(llama_dir: Path) -> CausalLMRuntime:
    return load_runtime(llama_dir)


def started(runtime: CausalLMRuntime, **options: object) -> GenerationEngine:
    engine = GenerationEngine(runtime, options)
    engine.start()
    return engine


async def wait_until_idle(engine: GenerationEngine) -> None:
    """Wait for the engine thread to have freed every block (it does so at its next step)."""
    for _ in range(500):
        stats = engine.stats()
        if stats["free_blocks"] == stats["num_blocks"] and engine.load == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine kept its blocks: {engine.stats()}")


TOKENS = 64


@run_async
async def test_streams_chunks_that_add_up_to_the_generation(runtime: CausalLMRuntime) -> None:
    # Chunks a slow consumer has not read yet are merged by design: enough tokens that even a
    # loaded machine reads the stream in several.
    engine = started(runtime)
    try:
        stream = engine.generate(PROMPTS[0], SamplingParams(max_tokens=TOKENS, ignore_eos=True))
        assert isinstance(stream, GenerationStream)
        prompt = runtime.tokenizer.encode(PROMPTS[0])
        assert stream.prompt_tokens == len(prompt)
        chunks = [chunk async for chunk in stream]
        assert len(chunks) > 1 and all(c.finish_reason is None for c in chunks[:-1])
        tokens = [t for c in chunks for t in c.token_ids]
        assert tokens == generate_alone(runtime, prompt, SamplingParams(max_tokens=TOKENS, ignore_eos=True))
        assert "".join(c.text for c in chunks) == runtime.tokenizer.decode(tokens)
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].usage.to_dict() == {
            "prompt_tokens": len(prompt),
            "completion_tokens": TOKENS,
            "total_tokens": len(prompt) + TOKENS,
        }
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
    finally:
        engine.stop()


@run_async
async def test_concurrent_requests_match_their_solo_runs(runtime: CausalLMRuntime) -> None:
    engine = started(runtime, max_num_seqs=3, max_batched_tokens=32)
    try:
        params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (20, 5, 14, 9)] * 2
        prompts = PROMPTS * 2
        results = await asyncio.gather(*(engine.complete(p, s) for p, s in zip(prompts, params, strict=True)))
        for prompt, param, result in zip(prompts, params, results, strict=True):
            assert result.token_ids == generate_alone(runtime, runtime.tokenizer.encode(prompt), param)
            assert result.finish_reason == "length" and result.usage.completion_tokens == param.max_tokens
        stats = engine.stats()
        assert stats["finished"] == 8 and stats["steps"] < sum(p.max_tokens or 0 for p in params)
        await wait_until_idle(engine)
    finally:
        engine.stop()


@run_async
async def test_a_cancelled_consumer_aborts_its_sequence(runtime: CausalLMRuntime) -> None:
    engine = started(runtime)
    try:
        first_chunk = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(PROMPTS[1], SamplingParams(max_tokens=200, ignore_eos=True)):
                first_chunk.set()

        task = asyncio.create_task(consume())
        await first_chunk.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_idle(engine)
        assert engine.stats()["aborted"] == 1 and engine.stats()["generated_tokens"] < 200
    finally:
        engine.stop()


@run_async
async def test_a_dropped_or_exited_stream_aborts_its_sequence(runtime: CausalLMRuntime) -> None:
    engine = started(runtime)
    try:
        stream = engine.generate(PROMPTS[2], SamplingParams(max_tokens=200, ignore_eos=True))
        async for _ in stream:
            break
        del stream
        gc.collect()
        await wait_until_idle(engine)
        async with engine.generate(PROMPTS[2], SamplingParams(max_tokens=200, ignore_eos=True)) as stream:
            await stream.__anext__()
        await wait_until_idle(engine)
        assert engine.stats()["aborted"] == 2
    finally:
        engine.stop()


@run_async
async def test_a_slow_consumer_gets_what_piled_up_in_one_chunk(runtime: CausalLMRuntime) -> None:
    engine = started(runtime)
    try:
        stream = engine.generate(PROMPTS[3], SamplingParams(max_tokens=10, ignore_eos=True))
        while not stream.finished:  # every chunk has been handed to the stream, none read yet
            await asyncio.sleep(0.005)
        chunks = [chunk async for chunk in stream]
        assert len(chunks) == 1 and len(chunks[0].token_ids) == 10 and chunks[0].finish_reason == "length"
    finally:
        engine.stop()


@run_async
async def test_bad_requests_raise_at_once(runtime: CausalLMRuntime) -> None:
    engine = started(runtime, max_num_seqs=1, max_waiting=1)
    try:
        with pytest.raises(InvalidRequestError) as caught:
            engine.generate("word " * 400)
        assert caught.value.details["param"] == "prompt"
        with pytest.raises(InvalidRequestError):
            engine.generate(3.5)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError) as caught:
            engine.generate(PROMPTS[0], SamplingParams(max_tokens=1000))
        assert caught.value.details["param"] == "max_tokens"
        streams = [engine.generate(PROMPTS[0], SamplingParams(max_tokens=50)) for _ in range(2)]
        with pytest.raises(ServerBusyError) as busy:
            engine.generate(PROMPTS[0])
        assert busy.value.status == 503
        for stream in streams:
            stream.abort()
        await wait_until_idle(engine)
    finally:
        engine.stop()


@run_async
async def test_deadlines_and_stopping_end_streams_with_errors(runtime: CausalLMRuntime) -> None:
    engine = started(runtime)
    late = engine.generate(PROMPTS[0], SamplingParams(ignore_eos=True), deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceededError):
        await late.collect()
    running = engine.generate(PROMPTS[1], SamplingParams(ignore_eos=True))
    await running.__anext__()
    await asyncio.get_running_loop().run_in_executor(None, engine.stop)
    with pytest.raises(ModelNotReadyError):
        await running.collect()
    with pytest.raises(ModelNotReadyError):
        engine.generate(PROMPTS[0])


@run_async
async def test_drain_lets_requests_in_flight_finish(runtime: CausalLMRuntime) -> None:
    engine = started(runtime)
    stream = engine.generate(PROMPTS[0], SamplingParams(max_tokens=15, ignore_eos=True))
    drained = asyncio.create_task(engine.drain(timeout=10))
    await asyncio.sleep(0)
    with pytest.raises(ModelNotReadyError):
        engine.generate(PROMPTS[0])
    result = await stream.collect()
    await drained
    assert result.finish_reason == "length" and len(result.token_ids) == 15


async def replicas_of(directory: Path, host: PluginHost, **options: object) -> ReplicaSet:
    spec = RuntimeSpec(
        "causal-lm",
        str(directory),
        model="tiny",
        version="1",
        options={"dtype": "float64", "kv_cache_bytes": 2 << 20, **options},
    )
    instance = Instance(spec, ThreadExecutor(spec, host))
    await instance.start()
    replicas = ReplicaSet("tiny", "1")
    replicas.add(instance)
    return replicas


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost().discover()


@run_async
async def test_the_batcher_serves_generate_and_v2_beside_its_instance(
    llama_dir: Path, host: PluginHost
) -> None:
    replicas = await replicas_of(llama_dir, host)
    batcher = host.load("batcher", "continuous")(replicas, {"max_num_seqs": 4})
    assert isinstance(batcher, ContinuousBatcher) and batcher.streams
    await batcher.start()
    try:
        assert batcher.max_model_len == 256
        prompt = batcher.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
        payload = GenerationPayload(
            prompt=tuple(prompt), sampling=SamplingParams(max_tokens=6, ignore_eos=True)
        )
        result = await batcher.stream(InferenceRequest("tiny", {}, generation=payload)).collect()
        assert len(result.token_ids) == 6 and result.usage.prompt_tokens == len(prompt)

        request = InferenceRequest(
            "tiny",
            {"text_input": np.array([b"Hello", b"The quick brown fox"], dtype=object)},
            parameters={"max_tokens": 4, "ignore_eos": True, "binary_data_output": True},
        )
        outputs = await batcher.submit(request)
        assert outputs["text_output"].shape == (2,) and outputs["text_output"].dtype == object
        assert list(outputs["completion_tokens"]) == [4, 4]
        assert list(outputs["finish_reason"]) == [b"length", b"length"]
        with pytest.raises(InvalidInputError):
            batcher.submit(InferenceRequest("tiny", {"prompt": np.array([b"x"], dtype=object)}))
        with pytest.raises(InvalidRequestError):
            batcher.submit(
                InferenceRequest(
                    "tiny", {"text_input": np.array([b"x"], dtype=object)}, parameters={"top_p": 2}
                )
            )
        assert batcher.queue_depth == 0
    finally:
        await batcher.stop(drain_timeout=5)
        for instance in replicas.instances:
            await instance.stop()
    with pytest.raises(ModelNotReadyError):
        batcher.stream(InferenceRequest("tiny", {}, generation=GenerationPayload(prompt="Hello")))


@run_async
async def test_the_batcher_refuses_a_runtime_that_cannot_step(host: PluginHost, tmp_path: Path) -> None:
    replicas = ReplicaSet("plain", "1")
    spec = RuntimeSpec("causal-lm", str(tmp_path), model="plain", version="1")
    instance = Instance(spec, ThreadExecutor(spec, host))
    instance.state = instance.state.READY  # an instance whose executor holds no step-able runtime
    replicas.add(instance)
    batcher = ContinuousBatcher(replicas, {})
    with pytest.raises(ConfigError, match="step-able"):
        await batcher.start()


@run_async
async def test_an_instance_leaving_the_set_finishes_its_running_generations(
    llama_dir: Path, host: PluginHost
) -> None:
    replicas = await replicas_of(llama_dir, host)
    leaving = replicas.instances[0]
    batcher = ContinuousBatcher(replicas, {})
    await batcher.start()
    try:
        payload = GenerationPayload(
            prompt="the quick", sampling=SamplingParams(max_tokens=40, ignore_eos=True)
        )
        stream = batcher.stream(InferenceRequest("tiny", {}, generation=payload))
        first = await stream.__anext__()
        replicas.remove(leaving)  # scaled down while the sequence runs
        release = asyncio.ensure_future(batcher.release(leaving, 10.0))
        rest = [chunk async for chunk in stream]
        await release
        tokens = len(first.token_ids) + sum(len(c.token_ids) for c in rest)
        assert tokens == 40 and rest[-1].finish_reason == "length"  # finished, not cut off
        with pytest.raises(ModelNotReadyError):  # no instance left to take a new one
            batcher.stream(InferenceRequest("tiny", {}, generation=payload))
    finally:
        await batcher.stop(drain_timeout=5)
        await leaving.stop()
