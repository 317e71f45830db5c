"""The causal-LM step runtime: a checkpoint directory in, one step over many sequences at a time.

Options (``[options]`` in model.toml):

* ``dtype``: ``"auto"`` (float32 on CPU, the checkpoint's dtype on CUDA), ``"float32"``, ``"float64"``,
  ``"bfloat16"``, ``"float16"``;
* ``block_size``: tokens per cache block (default 16);
* ``kv_cache_bytes``: the cache's memory budget, an integer or a string such as ``"512MiB"``
  (default on CPU: the smaller of 512 MiB and a tenth of physical memory; on CUDA:
  ``gpu_memory_utilization`` of the device, default 0.9, less what the weights and activations use);
* ``max_model_len``: context length (default the checkpoint's);
* ``paged``: ``false`` gives one contiguous slot per sequence instead of blocks;
* ``quantize``: ``"none"`` (default) or ``"int8"``: int8 weights for every projection, the LM head
  and the token embeddings. On CPU with float32 activations the products run on fbgemm's dynamic
  int8 kernel, which also rounds each product's activations to 8 bits; elsewhere (CUDA, other
  dtypes) the weights are converted inside each product and activations stay as they are
  (``quantize.py`` has the measurements behind the choice);
* ``speculative``: set by the core from a model's top-level ``speculative`` table (``ladle.speculative``):
  the draft checkpoint, its options and ``num_tokens``. The draft is loaded beside the target, its
  K/V cache mirrors the target's blocks (``bytes_per_token`` counts both), and decoding sequences
  get up to ``num_tokens`` draft tokens verified per step (``speculative.py``). The draft must have
  the target's vocabulary and hold at least ``max_model_len`` positions.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
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
from .inputs import Feed, build_inputs
from .model import CausalLM, load_weights
from .quantize import MODES
from .sampling import sample_rows
from .speculative import Speculator
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
_MAX_DRAFT_TOKENS = 16


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


def _quantize(value: object, key: str = "quantize") -> str:
    if not isinstance(value, str) or value not in MODES:
        raise ConfigError(
            f"option {key} must be one of {', '.join(repr(m) for m in MODES)}, got {value!r}", key=key
        )
    return value


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
        self._speculator: Speculator | None = None

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
        quantize = _quantize(options.get("quantize", "none"))
        self._tokenizer = CheckpointTokenizer(directory, extra_eos=args.eos_token_ids)
        with torch.inference_mode():
            self.model = CausalLM(args, load_weights(directory, device, dtype), directory, quantize)
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
        if "speculative" in options:
            draft = self._load_draft(options["speculative"], device, directory, max_len)
            self._speculator = draft
            bytes_per_token += (
                draft.model.args.bytes_per_token_per_element
                * torch.empty((), dtype=draft.model.dtype).element_size()
            )
        budget = self._budget(options, device)
        num_blocks = blocks_for_budget(budget, block_size, bytes_per_token)
        if num_blocks < 1 or num_blocks * block_size < max_len:
            raise ConfigError(
                f"a KV cache of {budget} bytes holds {num_blocks * block_size} tokens, less than one "
                f"sequence of max_model_len={max_len}: raise kv_cache_bytes or lower max_model_len"
            )
        self.model.allocate_cache(num_blocks, block_size)
        if self._speculator is not None:
            self._speculator.model.allocate_cache(num_blocks, block_size)
        self._cache = CacheSpec(paged, block_size, num_blocks, max_len, bytes_per_token)
        self._generator = torch.Generator(device=device)

    def _load_draft(self, value: object, device: torch.device, directory: Path, max_len: int) -> Speculator:
        """The draft model the core resolved for this version (``options.speculative``)."""
        target = self.spec.model or directory.name
        if not isinstance(value, Mapping) or not isinstance(value.get("artifact"), str):
            raise ConfigError(
                "option speculative is filled in by ladle from the model's top-level table "
                "speculative = { draft = 'MODEL', num_tokens = 4 }: set that instead",
                model=target,
            )
        name = str(value.get("draft", "draft"))
        num_tokens = value.get("num_tokens", 4)
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
            raise ConfigError(f"speculative.num_tokens must be an integer, got {num_tokens!r}", model=target)
        if not 1 <= num_tokens <= _MAX_DRAFT_TOKENS:
            raise ConfigError(
                f"speculative.num_tokens must be between 1 and {_MAX_DRAFT_TOKENS}, got {num_tokens}",
                model=target,
            )
        path = Path(value["artifact"])
        draft_dir = path if path.is_dir() else path.parent
        options = value.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"the options of draft model {name!r} must be a table", model=target)
        args = read_config(draft_dir)
        self._check_vocabulary(draft_dir, name, target)
        if args.max_position_embeddings < max_len:
            raise ConfigError(
                f"draft model {name!r} holds {args.max_position_embeddings} positions, fewer than model "
                f"{target!r}'s max_model_len={max_len}: lower max_model_len",
                model=target,
                draft=name,
            )
        dtype = self._dtype(options.get("dtype", "auto"), device, args)
        quantize = _quantize(options.get("quantize", "none"), f"quantize of draft model {name!r}")
        with torch.inference_mode():
            draft = CausalLM(args, load_weights(draft_dir, device, dtype), draft_dir, quantize)
        assert self.args is not None
        return Speculator(draft, num_tokens, self.args.vocab_size)

    def _check_vocabulary(self, draft_dir: Path, name: str, target: str) -> None:
        try:
            vocabulary = Tokenizer.from_file(str(draft_dir / "tokenizer.json")).get_vocab(
                with_added_tokens=True
            )
        except Exception as exc:  # the library raises its own exception type
            raise ConfigError(
                f"draft model {name!r} for model {target!r}: cannot load its tokenizer: {exc}",
                model=target,
                draft=name,
            ) from None
        if vocabulary != self.tokenizer.library_tokenizer.get_vocab(with_added_tokens=True):
            raise ConfigError(
                f"draft model {name!r} does not share model {target!r}'s tokenizer: speculative "
                "decoding needs the same token ids in both",
                model=target,
                draft=name,
            )

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
        """A prefill chunk and a decode step (speculating, with a draft) through the first blocks
        (overwritten by the first real requests)."""
        spec = self.cache_spec()
        ahead = min(self.speculative_tokens(), max(0, spec.max_model_len - 10))
        tokens = [0] * min(8, spec.max_model_len - 1)
        table = list(range(min(spec.num_blocks, -(-(len(tokens) + 1 + ahead) // spec.block_size))))
        greedy = SamplingParams(max_tokens=1)
        self.step([StepItem(-1, tokens, 0, table, True, greedy)])
        self.step([StepItem(-1, [0], len(tokens), table, True, greedy, lookahead=ahead)])
        self.release_sequence(-1)

    def memory_bytes(self) -> int | None:
        if self.model is None or self._cache is None:
            return None
        cache = self._cache
        weights = self.model.parameter_bytes()
        if self._speculator is not None:
            weights += self._speculator.model.parameter_bytes()
        return weights + cache.num_blocks * cache.block_size * cache.bytes_per_token

    def unload(self) -> None:
        device = self.model.device if self.model is not None else None
        self.model = None
        self._speculator = None
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

    def speculative_tokens(self) -> int:
        return self._speculator.num_tokens if self._speculator is not None else 0

    def release_sequence(self, seq_id: int) -> None:
        if self._speculator is not None:
            self._speculator.release(seq_id)

    def step(self, items: Sequence[StepItem], copies: Sequence[tuple[int, int]] = ()) -> list[list[int]]:
        model = self.model
        generator = self._generator
        if model is None or generator is None:
            raise RuntimeError("the runtime is not loaded")
        with torch.inference_mode(), self._attention_backends():
            if copies:
                self._copy(copies)
            if not items:
                return []
            if self._speculator is not None:
                return self._speculator.step(model, items, generator)
            feeds = [
                Feed(item.tokens, item.start, item.block_table, 1 if item.sample else 0) for item in items
            ]
            inputs, rows = build_inputs(model, feeds)
            logits = model.forward(inputs)
            sampled = [i for i in range(len(items)) if rows[i] >= 0]
            tokens = sample_rows(
                logits,
                [items[i].params for i in sampled],
                [items[i].seed for i in sampled],
                [items[i].output_index for i in sampled],
                generator,
            )
        results: list[list[int]] = [[] for _ in items]
        for i, token in zip(sampled, tokens, strict=True):
            results[i] = [token]
        return results

    # step internals --------------------------------------------------------------------------

    def _attention_backends(self) -> contextlib.AbstractContextManager[None]:
        # cuDNN attention builds an execution plan per shape, and shapes change at every step of
        # continuous batching (seen: hundreds of ms per new shape); flash and memory-efficient don't.
        if self.model is None or self.model.device.type != "cuda":
            return contextlib.nullcontext()
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        return sdpa_kernel(backends)

    def _copy(self, copies: Sequence[tuple[int, int]]) -> None:
        assert self.model is not None
        size = self.model.block_size
        offsets = np.arange(size, dtype=np.int64)
        pairs = np.asarray(copies, dtype=np.int64)
        sources = torch.from_numpy((pairs[:, 0:1] * size + offsets).ravel())
        targets = torch.from_numpy((pairs[:, 1:2] * size + offsets).ravel())
        models = [self.model] if self._speculator is None else [self.model, self._speculator.model]
        for model in models:
            model.copy_blocks(sources.to(model.device), targets.to(model.device))
