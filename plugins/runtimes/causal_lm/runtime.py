"""The causal-LM step runtime: a checkpoint directory in, one step over many sequences at a time.

Options (``[options]`` in model.toml):

* ``dtype``: ``"auto"`` (float32 on CPU, the checkpoint's dtype on CUDA), ``"float32"``, ``"float64"``,
  ``"bfloat16"``, ``"float16"``;
* ``block_size``: tokens per cache block (default 16);
* ``kv_cache_bytes``: the cache's memory budget, an integer or a string such as ``"512MiB"``
  (default on CPU: the smaller of 512 MiB and a tenth of physical memory; on CUDA:
  ``gpu_memory_utilization`` of the device, default 0.9, less what the weights and activations use);
* ``max_model_len``: context length (default the checkpoint's);
* ``paged``: ``false`` gives one contiguous slot per sequence instead of blocks.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ladle import (
    CacheSpec,
    ConfigError,
    RuntimeSpec,
    SamplingParams,
    StepItem,
    StepRuntime,
    blocks_for_budget,
)

from .config import ModelArgs, read_config
from .grouping import length_groups
from .model import CausalLM, DecodeGroup, Prefill, StepInputs, load_weights
from .tokenizer import CheckpointTokenizer

__all__ = ["CausalLMRuntime", "parse_bytes"]

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_CPU_BUDGET = 512 * 2**20
_ACTIVATION_RESERVE = 1 << 30  # CUDA memory left for activations when sizing the cache
# The fixed cost of one more decode attention group, in gathered K/V elements per layer (measured on
# CPU: one gather pair and one attention call cost about as much as moving this many elements).
_GROUP_OVERHEAD_ELEMENTS = 32768


def parse_bytes(value: object, key: str) -> int:
    """``1048576``, ``"512MiB"``, ``"2 GB"`` -> bytes; raises ``ConfigError`` naming ``key``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if match and match.group(2).lower() in _UNITS:
            number = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
            if number > 0:
                return number
    raise ConfigError(
        f"option {key} must be a positive byte count such as 536870912 or '512MiB', got {value!r}"
    )


def _mix(seed: int, index: int) -> int:
    """A per-token seed from the request seed and the token's index (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class CausalLMRuntime(StepRuntime):
    """Serves a Llama-style or GPT-2 checkpoint (config.json, *.safetensors, tokenizer.json)."""

    name = "causal-lm"

    def __init__(self, spec: RuntimeSpec) -> None:
        super().__init__(spec)
        self.model: CausalLM | None = None
        self.args: ModelArgs | None = None
        self._tokenizer: CheckpointTokenizer | None = None
        self._cache: CacheSpec | None = None
        self._generator: torch.Generator | None = None

    # lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        options = dict(self.spec.options)
        directory = self.spec.path if self.spec.path.is_dir() else self.spec.path.parent
        device = torch.device(self.spec.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.spec.device!r} was asked for but CUDA is not available")
        if device.type == "cpu":
            torch.set_num_threads(max(1, self.spec.threads))
        self.args = args = read_config(directory)
        dtype = self._dtype(options.get("dtype", "auto"), device, args)
        self._tokenizer = CheckpointTokenizer(directory, extra_eos=args.eos_token_ids)
        with torch.inference_mode():
            self.model = CausalLM(args, load_weights(directory, device, dtype), directory)
        max_len = int(options.get("max_model_len", args.max_position_embeddings))
        if not 0 < max_len <= args.max_position_embeddings:
            raise ConfigError(
                f"option max_model_len must be between 1 and {args.max_position_embeddings}, got {max_len}"
            )
        paged = options.get("paged", True)
        if not isinstance(paged, bool):
            raise ConfigError(f"option paged must be true or false, got {paged!r}")
        block_size = int(options.get("block_size", 16)) if paged else max_len
        if block_size <= 0:
            raise ConfigError(f"option block_size must be positive, got {block_size}")
        element = torch.empty((), dtype=dtype).element_size()
        bytes_per_token = args.bytes_per_token_per_element * element
        budget = self._budget(options, device)
        num_blocks = blocks_for_budget(budget, block_size, bytes_per_token)
        if num_blocks < 1 or num_blocks * block_size < max_len:
            raise ConfigError(
                f"a KV cache of {budget} bytes holds {num_blocks * block_size} tokens, less than one "
                f"sequence of max_model_len={max_len}: raise kv_cache_bytes or lower max_model_len"
            )
        self.model.allocate_cache(num_blocks, block_size)
        self._cache = CacheSpec(paged, block_size, num_blocks, max_len, bytes_per_token)
        self._generator = torch.Generator(device=device)

    @staticmethod
    def _dtype(value: object, device: torch.device, args: ModelArgs) -> torch.dtype:
        if value == "auto":
            if device.type == "cuda" and args.dtype in DTYPES:
                return DTYPES[args.dtype]
            return torch.float32
        if not isinstance(value, str) or value not in DTYPES:
            raise ConfigError(f"option dtype must be 'auto' or one of {sorted(DTYPES)}, got {value!r}")
        return DTYPES[value]

    def _budget(self, options: dict[str, Any], device: torch.device) -> int:
        if "kv_cache_bytes" in options:
            return parse_bytes(options["kv_cache_bytes"], "kv_cache_bytes")
        if device.type == "cuda":
            fraction = float(options.get("gpu_memory_utilization", 0.9))
            free, total = torch.cuda.mem_get_info(device)
            used = total - free
            return max(0, int(total * fraction) - used - _ACTIVATION_RESERVE)
        try:
            physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (OSError, ValueError):
            physical = 8 * _CPU_BUDGET
        return min(_CPU_BUDGET, physical // 10)

    def warmup(self) -> None:
        """One prefill chunk and one decode step through block 0 (overwritten by the first real request)."""
        spec = self.cache_spec()
        tokens = [0] * min(8, spec.max_model_len - 1)
        table = list(range(-(-(len(tokens) + 1) // spec.block_size)))
        greedy = SamplingParams(max_tokens=1)
        self.step([StepItem(-1, tokens, 0, table, True, greedy)])
        self.step([StepItem(-1, [0], len(tokens), table, True, greedy)])

    def memory_bytes(self) -> int | None:
        if self.model is None or self._cache is None:
            return None
        cache = self._cache
        return self.model.parameter_bytes() + cache.num_blocks * cache.block_size * cache.bytes_per_token

    def unload(self) -> None:
        device = self.model.device if self.model is not None else None
        self.model = None
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()

    # StepRuntime -----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> CheckpointTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the runtime is not loaded")
        return self._tokenizer

    def cache_spec(self) -> CacheSpec:
        if self._cache is None:
            raise RuntimeError("the runtime is not loaded")
        return self._cache

    def step(self, items: Sequence[StepItem], copies: Sequence[tuple[int, int]] = ()) -> list[list[int]]:
        model = self.model
        if model is None:
            raise RuntimeError("the runtime is not loaded")
        with torch.inference_mode(), self._attention_backends():
            if copies:
                self._copy(model, copies)
            if not items:
                return []
            inputs, sampled = self._inputs(model, items)
            logits = model.forward(inputs)
            tokens = self._sample(logits, [items[i] for i in sampled])
        results: list[list[int]] = [[] for _ in items]
        for row, item_index in enumerate(sampled):
            results[item_index] = [tokens[row]]
        return results

    # step internals --------------------------------------------------------------------------

    def _attention_backends(self) -> contextlib.AbstractContextManager[None]:
        # cuDNN attention builds an execution plan per shape, and shapes change at every step of
        # continuous batching (seen: hundreds of ms per new shape); flash and memory-efficient don't.
        if self.model is None or self.model.device.type != "cuda":
            return contextlib.nullcontext()
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        return sdpa_kernel(backends)

    def _copy(self, model: CausalLM, copies: Sequence[tuple[int, int]]) -> None:
        size = model.block_size
        offsets = np.arange(size, dtype=np.int64)
        pairs = np.asarray(copies, dtype=np.int64)
        sources = (pairs[:, 0:1] * size + offsets).ravel()
        targets = (pairs[:, 1:2] * size + offsets).ravel()
        model.copy_blocks(self._tensor(sources, model), self._tensor(targets, model))

    @staticmethod
    def _tensor(array: np.ndarray[Any, Any], model: CausalLM) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor if model.device.type == "cpu" else tensor.to(model.device, non_blocking=True)

    def _inputs(self, model: CausalLM, items: Sequence[StepItem]) -> tuple[StepInputs, list[int]]:
        """The flat batch: single-token items first (one batched attention), then prefill chunks."""
        size = model.block_size
        decode = [i for i, item in enumerate(items) if len(item.tokens) == 1]
        prefill = [i for i, item in enumerate(items) if len(item.tokens) > 1]
        ids: list[int] = []
        positions: list[np.ndarray[Any, Any]] = []
        writes: list[np.ndarray[Any, Any]] = []
        sample_rows: list[int] = []
        sampled: list[int] = []
        offsets = np.arange(size, dtype=np.int64)
        inputs = StepInputs(
            input_ids=torch.empty(0),
            positions=torch.empty(0),
            write_slots=torch.empty(0),
            sample_rows=torch.empty(0),
            decodes=len(decode),
        )
        if decode:
            decode.sort(key=lambda i: items[i].start)  # by context length: each group is one run of rows
            starts = np.fromiter((items[i].start for i in decode), dtype=np.int64, count=len(decode))
            lengths = starts + 1
            width = int(-(-lengths[-1] // size))
            table = np.zeros((len(decode), width), dtype=np.int64)
            for row, i in enumerate(decode):
                blocks = items[i].block_table
                used = min(width, len(blocks))
                table[row, :used] = blocks[:used]
                ids.append(items[i].tokens[0])
            slots = (table[:, :, None] * size + offsets).reshape(len(decode), -1)
            positions.append(starts)
            writes.append(slots[np.arange(len(decode)), starts])
            overhead = _GROUP_OVERHEAD_ELEMENTS / (model.args.num_kv_heads * model.args.head_dim)
            for first, stop in length_groups(lengths.tolist(), overhead):
                length = int(lengths[stop - 1])
                index = self._tensor(np.ascontiguousarray(slots[first:stop, :length]).ravel(), model)
                mask = None
                if lengths[first] != length:
                    padded = np.arange(length)[None, :] < lengths[first:stop, None]
                    mask = self._tensor(padded, model).view(stop - first, 1, 1, length)
                inputs.decode_groups.append(DecodeGroup(first, stop - first, length, index, mask))
            for row, i in enumerate(decode):
                if items[i].sample:
                    sample_rows.append(row)
                    sampled.append(i)
        offset = len(decode)
        for i in prefill:
            item = items[i]
            count = len(item.tokens)
            start = item.start
            end = start + count
            blocks = np.asarray(item.block_table[: -(-end // size)], dtype=np.int64)
            slots = (blocks[:, None] * size + offsets).ravel()[:end]
            ids.extend(item.tokens)
            positions.append(np.arange(start, end, dtype=np.int64))
            writes.append(slots[start:])
            kv_index: torch.Tensor | None = None
            mask: torch.Tensor | None = None
            if start:
                kv_index = self._tensor(slots, model)
                causal = np.arange(end)[None, :] <= np.arange(start, end)[:, None]
                mask = self._tensor(causal, model)
            inputs.prefills.append(Prefill(offset, count, start, kv_index, mask))
            offset += count
            if item.sample:
                sample_rows.append(offset - 1)
                sampled.append(i)
        inputs.input_ids = self._tensor(np.asarray(ids, dtype=np.int64), model)
        inputs.positions = self._tensor(np.concatenate(positions), model)
        inputs.write_slots = self._tensor(np.concatenate(writes), model)
        inputs.sample_rows = self._tensor(np.asarray(sample_rows, dtype=np.int64), model)
        return inputs, sampled

    def _sample(self, logits: torch.Tensor, items: Sequence[StepItem]) -> list[int]:
        if not items:
            return []
        chosen: list[int] = logits.argmax(dim=-1).tolist()
        generator = self._generator
        assert generator is not None
        for row, item in enumerate(items):
            params = item.params
            if params.greedy:
                continue
            scores = logits[row].float() / params.temperature
            if params.top_k and params.top_k < scores.shape[0]:
                kth = torch.topk(scores, params.top_k).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            probabilities = torch.softmax(scores, dim=-1)
            if params.top_p < 1.0:
                ordered, indices = torch.sort(probabilities, descending=True)
                cumulative = torch.cumsum(ordered, dim=-1)
                drop = cumulative - ordered >= params.top_p  # keep the smallest prefix reaching top_p
                ordered = ordered.masked_fill(drop, 0.0)
                probabilities = torch.zeros_like(probabilities).scatter_(0, indices, ordered)
            generator.manual_seed(_mix(item.seed, item.output_index))
            chosen[row] = int(torch.multinomial(probabilities, 1, generator=generator).item())
        return chosen
