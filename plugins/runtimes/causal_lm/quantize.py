"""The matrix products and embedding tables of the causal-LM runtime, dense or with int8 weights.

``options.quantize = "int8"`` stores every projection weight (attention, MLP, the LM head) and the
token embeddings as int8 with one scale per output row (symmetric per-channel: ``w ~ q * scale``,
``|q| <= 127``); norms, biases and GPT-2's position embeddings keep the model's dtype. How a
product then runs depends on where it runs:

* **CPU, float32 activations**: fbgemm's dynamic int8 kernel (``quantized::linear_dynamic``, the
  kernel ``torch.ao.quantization.quantize_dynamic`` puts behind ``nn.Linear``). The weight is packed
  once at load; each call rounds its activations to 8 bits (one scale per product) and multiplies
  in int8. On the AVX-512 VNNI machine this was measured on (torch 2.13, one thread), it ran
  1.5-12x faster than the float32 product at 1-80 rows, while ``torch._weight_int8pack_mm`` with
  float32 activations ran 4-30x *slower* than float32 (and with bfloat16 activations about as fast
  as float32), and hand-quantised ``torch._int_mm`` came between the two. The rounded activations
  cost some agreement with float32: on the ~19M-parameter random-weight model of
  ``benchmarks/quantization.py``, top-1 agreement was 0.84 with this kernel, 0.88 with per-row
  activation scales through ``torch._int_mm`` (1.4-1.7x float32's speed instead of 2.2-2.8x) and
  0.92 with weight-only products (the path below, slower than float32 on CPU). torch 2.13 warns
  that creating the quantized weight tensor is deprecated; that happens once per matrix at load,
  with the warning silenced there.
* **anywhere else** (CUDA, or activations in another dtype): the int8 weight is converted to the
  activation dtype and scaled inside each product, one matrix at a time. Memory at rest is a quarter
  of float32 (half of float16); the product costs a conversion more than a dense one.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = ["MODES", "Dense", "DynamicInt8", "Embedding", "Linear", "WeightInt8", "linear", "quantize_rows"]

#: ``options.quantize`` values: ``"none"`` (the default) keeps the checkpoint's weights as they are.
MODES = ("none", "int8")
_INT8_MAX = 127.0


class Linear(Protocol):
    """``y = x @ W.T + b`` for one weight matrix, however it is stored."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def memory(self, seen: set[int]) -> int:
        """Bytes held, counting no tensor whose storage is in ``seen`` (tied weights count once)."""
        ...


def _tensor_bytes(tensors: list[torch.Tensor | None], seen: set[int]) -> int:
    total = 0
    for tensor in tensors:
        if tensor is None or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``(q, scale)`` with ``weight ~ q * scale[:, None]`` (scale in float32)."""
    rows = weight.detach().float()
    scale = (rows.abs().amax(dim=1) / _INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(rows / scale[:, None]).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return q, scale


class Dense:
    """The checkpoint's weight as it is."""

    __slots__ = ("bias", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def memory(self, seen: set[int]) -> int:
        return _tensor_bytes([self.weight, self.bias], seen)


class DynamicInt8:
    """fbgemm's prepacked int8 weight; float32 activations are quantized per call (CPU only)."""

    __slots__ = ("_bytes", "_reduce_range", "packed")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        rows = q.shape[0]
        # x86 without VNNI sums pairs of u8*s8 products in int16, which saturates at the full 8-bit
        # activation range (18% error on one product measured on AVX2): 7 bits, as PyTorch's own
        # dynamic Linear uses on these engines
        self._reduce_range = torch.backends.quantized.engine in ("fbgemm", "x86")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
            weight = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros(rows, dtype=torch.long), 0
            )
            self.packed = torch.ops.quantized.linear_prepack(weight, None if bias is None else bias.float())
        # fbgemm pads and interleaves the packed weight: measured at 1.0-1.4x the int8 bytes for these
        # shapes, counted as 1.25x; then per-row scales and zero points (float64, int64), column offsets
        self._bytes = q.numel() * 5 // 4 + rows * (8 + 8 + 4) + (0 if bias is None else bias.numel() * 4)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> DynamicInt8:
        q, scale = quantize_rows(weight)
        return cls(q, scale, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = torch.ops.quantized.linear_dynamic(
            x, self.packed, reduce_range=self._reduce_range
        )
        return result

    def memory(self, seen: set[int]) -> int:
        return self._bytes


class WeightInt8:
    """int8 weight and per-row scales, converted to the activations' dtype inside each product."""

    __slots__ = ("bias", "q", "scale")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.q = q
        self.scale = scale
        self.bias = bias

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> WeightInt8:
        q, scale = quantize_rows(weight)
        return cls(q, scale.to(dtype), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # scaled before the product: int8 values summed unscaled could overflow float16
        weight = self.q.to(x.dtype).mul_(self.scale.unsqueeze(1))
        return F.linear(x, weight, self.bias)

    def memory(self, seen: set[int]) -> int:
        return _tensor_bytes([self.q, self.scale, self.bias], seen)


def _fast_int8(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    return weight.device.type == "cpu" and dtype == torch.float32


def linear(weight: torch.Tensor, bias: torch.Tensor | None, quantize: str, dtype: torch.dtype) -> Linear:
    """The product for ``weight`` (``[out, in]``) under ``quantize`` with activations in ``dtype``."""
    if quantize == "none":
        return Dense(weight, bias)
    if _fast_int8(weight, dtype):
        return DynamicInt8.quantize(weight, bias)
    return WeightInt8.quantize(weight, bias, dtype)


class Embedding:
    """A token embedding table (``[vocab, hidden]``), dense or as int8 rows with one scale each; an
    int8 table also gives the LM head its weight when the two are tied."""

    __slots__ = ("q", "scale", "weight")

    def __init__(self, weight: torch.Tensor, quantize: str) -> None:
        self.weight: torch.Tensor | None = None
        self.q: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        if quantize == "none":
            self.weight = weight
        else:
            self.q, scale = quantize_rows(weight)
            self.scale = scale.to(weight.dtype)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.embedding(ids, self.weight)
        assert self.q is not None and self.scale is not None
        return F.embedding(ids, self.q).to(self.scale.dtype) * self.scale.index_select(0, ids).unsqueeze(1)

    def tied_head(self, dtype: torch.dtype) -> Linear:
        """The LM head that shares this table."""
        if self.weight is not None:
            return Dense(self.weight)
        assert self.q is not None and self.scale is not None
        if _fast_int8(self.q, dtype):
            return DynamicInt8(self.q, self.scale.float())  # fbgemm packs its own copy
        return WeightInt8(self.q, self.scale)

    def memory(self, seen: set[int]) -> int:
        return _tensor_bytes([self.weight, self.q, self.scale], seen)
