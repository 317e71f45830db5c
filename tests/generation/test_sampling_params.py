"""Sampling parameters (ladle.generation.SamplingParams): defaults and validation naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from ladle.errors import InvalidRequestError
from ladle.generation import CacheSpec, GenerationChunk, SamplingParams, Usage


def test_defaults_are_greedy_and_unbounded() -> None:
    params = SamplingParams()
    assert params.greedy
    assert params.max_tokens is None and params.stop == () and not params.ignore_eos
    assert not SamplingParams(temperature=0.7).greedy
    assert SamplingParams(temperature=0.7, top_k=1).greedy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -3),
        ("max_tokens", 1.5),
        ("max_tokens", "10"),
        ("max_tokens", True),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", "hot"),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("top_k", 2.5),
        ("seed", 2**64),
        ("seed", "7"),
        ("stop", [""]),
        ("stop", [1, 2]),
        ("stop", ["x"] * 17),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", ["a"]),
        ("ignore_eos", "yes"),
    ],
)
def test_a_bad_value_is_a_400_naming_the_parameter(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams.from_mapping({field: value})
    assert caught.value.status == 400
    assert caught.value.details["param"] == field
    assert field in caught.value.message


def test_from_mapping_takes_json_shapes() -> None:
    params = SamplingParams.from_mapping(
        {"max_tokens": 5, "temperature": 1, "stop": "END", "stop_token_ids": [3], "seed": None, "top_p": 0.5}
    )
    assert params == SamplingParams(
        max_tokens=5, temperature=1.0, top_p=0.5, stop=("END",), stop_token_ids=(3,)
    )
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams.from_mapping({"max_tokens": 4.0}).max_tokens == 4


def test_unknown_keys_are_refused_when_strict_and_ignored_otherwise() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams.from_mapping({"max_tokns": 5})
    assert caught.value.details["param"] == "max_tokns"
    assert SamplingParams.from_mapping({"model": "m", "max_tokens": 5}, strict=False).max_tokens == 5
    with pytest.raises(InvalidRequestError):
        SamplingParams.from_mapping(["max_tokens"])  # type: ignore[arg-type]


def test_round_trip_through_a_dict() -> None:
    params = SamplingParams(max_tokens=3, temperature=0.5, top_k=4, seed=9, stop=("x",), stop_token_ids=(2,))
    assert SamplingParams.from_mapping(params.to_dict()) == params


def test_chunks_carry_running_usage() -> None:
    chunk = GenerationChunk("hi", [5], prompt_tokens=4, completion_tokens=2, finish_reason="length")
    assert chunk.finished and chunk.usage == Usage(4, 2)
    assert chunk.usage.to_dict() == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_an_unpaged_cache_is_one_slot_per_sequence() -> None:
    CacheSpec(paged=False, block_size=128, num_blocks=4, max_model_len=128, bytes_per_token=8)
    with pytest.raises(ValueError):
        CacheSpec(paged=False, block_size=16, num_blocks=4, max_model_len=128, bytes_per_token=8)
