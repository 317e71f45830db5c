"""Llama-style and GPT-2 decoders in plain torch, attending over a paged KV cache.

Weights keep their Hugging Face names on disk and are fused at load (one QKV matrix, one gate+up
matrix), so real checkpoints load. A step runs every scheduled token of every sequence as one flat
batch: matrix products see all tokens at once; attention runs once per group of single-token
(decode) sequences of similar lengths, gathering their K/V by block table with ``index_select`` into
one padded batch, and once per multi-token (prefill) chunk. Logits are computed only where a token
is sampled.

A decode group may carry several tokens per sequence (``DecodeGroup.queries``: a token and the
draft tokens verified with it in speculative decoding): its queries then attend under a causal mask
over the same gathered K/V, so verifying drafts costs one batched attention per group, not one per
sequence.

Gathered K/V land in two scratch buffers that live as long as the model. Allocating them per layer
and step cost more than the attention itself once a gather passed glibc's mmap threshold (32 MiB):
every such allocation is a fresh mapping, and its pages fault in again at every layer.

Projections and token embeddings are ``quantize.Linear`` / ``quantize.Embedding`` objects: dense, or
int8 with ``quantize="int8"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from ladle import ConfigError

from .config import ModelArgs
from .quantize import Embedding, Linear, linear

__all__ = ["CausalLM", "Checkpoint", "DecodeGroup", "Prefill", "StepInputs", "load_weights"]


class Checkpoint(Mapping[str, torch.Tensor]):
    """The tensors of every ``*.safetensors`` file in a directory, each read (in ``dtype`` on
    ``device``) when it is asked for, as a tensor of its own: a model built from it, quantized or
    not, holds only the weights it keeps (plus, while loading, the few it is converting), and the
    file is unmapped once the model is built."""

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype) -> None:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"{directory}: no *.safetensors file", file=str(directory))
        self.device = device
        self.dtype = dtype
        self._handles = [safe_open(str(path), framework="pt", device="cpu") for path in files]
        self._where = {name: handle for handle in self._handles for name in handle.keys()}  # noqa: SIM118

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor: torch.Tensor = self._where[name].get_tensor(name)
        dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
        # always a copy: a tensor still backed by the file's mapping would keep all of it resident
        return tensor.to(self.device, dtype, copy=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_weights(directory: Path, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    """Every tensor of every ``*.safetensors`` file in ``directory``, in ``dtype`` on ``device``."""
    return Checkpoint(directory, device, dtype)


class _Weights:
    """Takes named tensors out of a checkpoint, checking that each exists and has the expected shape."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], prefix: str, source: Path) -> None:
        self._tensors = tensors
        self._names = {(name[len(prefix) :] if name.startswith(prefix) else name): name for name in tensors}
        self._source = source

    def has(self, name: str) -> bool:
        return name in self._names

    def take(self, name: str, *shape: int) -> torch.Tensor:
        tensor = self._tensors[self._names[name]] if name in self._names else None
        if tensor is None:
            raise ConfigError(f"{self._source}: weight {name!r} is missing", file=str(self._source), key=name)
        if shape and tuple(tensor.shape) != shape:
            raise ConfigError(
                f"{self._source}: weight {name!r} has shape {list(tensor.shape)}, config says {list(shape)}",
                file=str(self._source),
                key=name,
            )
        return tensor

    def optional(self, present: bool, name: str, *shape: int) -> torch.Tensor | None:
        return self.take(name, *shape) if present else None


@dataclass
class _Layer:
    norm1: torch.Tensor
    norm1_bias: torch.Tensor | None
    qkv: Linear
    out: Linear
    norm2: torch.Tensor
    norm2_bias: torch.Tensor | None
    up: Linear  # llama: gate and up stacked
    down: Linear
    scale: float


@dataclass
class Prefill:
    """A multi-token chunk: tokens ``[offset, offset + length)`` of the flat batch, at positions
    ``start ..``; ``kv_index`` lists the cache slots of every position before the chunk's end
    (``None`` when the chunk starts the sequence: it then attends to its own K/V only)."""

    offset: int
    length: int
    start: int
    kv_index: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass
class DecodeGroup:
    """``count`` sequences of ``queries`` tokens each, rows ``[offset, offset + count * queries)`` of
    the flat batch, that attend together: ``kv_index`` holds ``count * length`` cache slots (each
    sequence's, padded to ``length``) and ``mask`` (``[count, 1, queries * heads_per_kv, length]``)
    says which slot each query may read (``None`` for single queries with nothing padded)."""

    offset: int
    count: int
    length: int
    kv_index: torch.Tensor
    mask: torch.Tensor | None
    queries: int = 1


@dataclass
class StepInputs:
    """One step's flat batch. Tokens ``[0, decodes)`` are single-token sequences, in ``decode_groups``;
    prefill chunks follow."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    write_slots: torch.Tensor
    sample_rows: torch.Tensor
    decodes: int = 0
    decode_groups: list[DecodeGroup] = field(default_factory=list)
    prefills: list[Prefill] = field(default_factory=list)


class _Scratch:
    """A flat buffer handed out as views of the asked size; it grows by half again when too small, so a
    slowly growing demand (contexts lengthen by a token per step) reallocates only now and then."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self._buffer = torch.empty(0, dtype=dtype, device=device)

    def view(self, *shape: int) -> torch.Tensor:
        needed = math.prod(shape)
        if needed > self._buffer.numel():
            size = max(needed, self._buffer.numel() * 3 // 2)
            self._buffer = torch.empty(size, dtype=self._buffer.dtype, device=self._buffer.device)
        return self._buffer[:needed].view(shape)


class CausalLM:
    """The model: weights, RoPE tables and the paged K/V cache (``[blocks * block_size, kv_heads, head_dim]``
    per layer)."""

    def __init__(
        self, args: ModelArgs, tensors: Mapping[str, torch.Tensor], source: Path, quantize: str = "none"
    ) -> None:
        self.args = args
        if isinstance(tensors, Checkpoint):
            self.device, self.dtype = tensors.device, tensors.dtype
        else:
            any_tensor = next(iter(tensors.values()))
            self.device = any_tensor.device
            self.dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
        self.quantize = quantize
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.block_size = 0
        self._keys = _Scratch(self.dtype, self.device)
        self._values = _Scratch(self.dtype, self.device)
        if args.family == "llama":
            self._load_llama(_Weights(tensors, "model.", source))
        else:
            self._load_gpt2(_Weights(tensors, "transformer.", source))

    # loading ---------------------------------------------------------------------------------

    def _load_llama(self, w: _Weights) -> None:
        a = self.args
        d, hd, i = a.hidden_size, a.head_dim, a.intermediate_size
        q, kv = a.num_heads * hd, a.num_kv_heads * hd
        embed = w.take("embed_tokens.weight", a.vocab_size, d)
        self.embed = Embedding(embed, self.quantize)
        self.position_embed: torch.Tensor | None = None
        self.layers = []
        for n in range(a.num_layers):
            p = f"layers.{n}."
            attention, mlp = p + "self_attn.", p + "mlp."
            qkv_bias = None
            if a.qkv_bias:
                qkv_bias = torch.cat(
                    [
                        w.take(attention + "q_proj.bias", q),
                        w.take(attention + "k_proj.bias", kv),
                        w.take(attention + "v_proj.bias", kv),
                    ]
                )
            up_bias = None
            if a.mlp_bias:
                up_bias = torch.cat([w.take(mlp + "gate_proj.bias", i), w.take(mlp + "up_proj.bias", i)])
            self.layers.append(
                _Layer(
                    norm1=w.take(p + "input_layernorm.weight", d),
                    norm1_bias=None,
                    qkv=self._linear(
                        torch.cat(
                            [
                                w.take(attention + "q_proj.weight", q, d),
                                w.take(attention + "k_proj.weight", kv, d),
                                w.take(attention + "v_proj.weight", kv, d),
                            ]
                        ),
                        qkv_bias,
                    ),
                    out=self._linear(
                        w.take(attention + "o_proj.weight", d, q),
                        w.optional(a.output_bias, attention + "o_proj.bias", d),
                    ),
                    norm2=w.take(p + "post_attention_layernorm.weight", d),
                    norm2_bias=None,
                    up=self._linear(
                        torch.cat(
                            [w.take(mlp + "gate_proj.weight", i, d), w.take(mlp + "up_proj.weight", i, d)]
                        ),
                        up_bias,
                    ),
                    down=self._linear(
                        w.take(mlp + "down_proj.weight", d, i),
                        w.optional(a.mlp_bias, mlp + "down_proj.bias", d),
                    ),
                    scale=1.0 / math.sqrt(hd),
                )
            )
        self.final_norm = w.take("norm.weight", d)
        self.final_norm_bias: torch.Tensor | None = None
        self.lm_head = (
            self.embed.tied_head(self.dtype)
            if a.tie_word_embeddings
            else self._linear(w.take("lm_head.weight", a.vocab_size, d), None)
        )
        self._rope_tables()

    def _load_gpt2(self, w: _Weights) -> None:
        a = self.args
        d, i = a.hidden_size, a.intermediate_size
        self.embed = Embedding(w.take("wte.weight", a.vocab_size, d), self.quantize)
        self.position_embed = w.take("wpe.weight", a.max_position_embeddings, d)
        self.layers = []
        for n in range(a.num_layers):
            p = f"h.{n}."
            # GPT-2 stores Conv1D weights as [in, out]; linear wants [out, in].
            self.layers.append(
                _Layer(
                    norm1=w.take(p + "ln_1.weight", d),
                    norm1_bias=w.take(p + "ln_1.bias", d),
                    qkv=self._linear(
                        w.take(p + "attn.c_attn.weight", d, 3 * d).t().contiguous(),
                        w.take(p + "attn.c_attn.bias", 3 * d),
                    ),
                    out=self._linear(
                        w.take(p + "attn.c_proj.weight", d, d).t().contiguous(),
                        w.take(p + "attn.c_proj.bias", d),
                    ),
                    norm2=w.take(p + "ln_2.weight", d),
                    norm2_bias=w.take(p + "ln_2.bias", d),
                    up=self._linear(
                        w.take(p + "mlp.c_fc.weight", d, i).t().contiguous(), w.take(p + "mlp.c_fc.bias", i)
                    ),
                    down=self._linear(
                        w.take(p + "mlp.c_proj.weight", i, d).t().contiguous(),
                        w.take(p + "mlp.c_proj.bias", d),
                    ),
                    scale=1.0 / (math.sqrt(a.head_dim) * ((n + 1) if a.scale_attn_by_layer else 1)),
                )
            )
        self.final_norm = w.take("ln_f.weight", d)
        self.final_norm_bias = w.take("ln_f.bias", d)
        if w.has("lm_head.weight") and not a.tie_word_embeddings:
            self.lm_head = self._linear(w.take("lm_head.weight", a.vocab_size, d), None)
        else:
            self.lm_head = self.embed.tied_head(self.dtype)

    def _linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
        return linear(weight, bias, self.quantize, self.dtype)

    def _rope_tables(self) -> None:
        # Computed in float32 exactly as transformers does, then cast: checkpoints were trained this way.
        a = self.args
        dim = a.head_dim
        inverse = 1.0 / (a.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        scaling = a.rope_scaling
        if scaling:
            factor = float(scaling.get("factor", 1.0))
            if scaling.get("rope_type", scaling.get("type")) == "linear":
                inverse = inverse / factor
            else:  # llama3
                low = float(scaling.get("low_freq_factor", 1.0))
                high = float(scaling.get("high_freq_factor", 4.0))
                original = float(scaling.get("original_max_position_embeddings", 8192))
                wavelength = 2 * math.pi / inverse
                scaled = torch.where(wavelength > original / low, inverse / factor, inverse)
                smooth = (original / wavelength - low) / (high - low)
                smoothed = (1 - smooth) * scaled / factor + smooth * scaled
                medium = ~(wavelength < original / high) * ~(wavelength > original / low)
                inverse = torch.where(medium, smoothed, scaled)
        positions = torch.arange(a.max_position_embeddings, dtype=torch.int64).float()
        angles = positions[:, None] * inverse[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        half = dim // 2
        sin = angles.sin()
        # rotate_half(x) * sin == roll(x, half) * [-sin_low, sin_high]
        signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
        self.rope_cos = angles.cos().to(self.device, self.dtype)
        self.rope_sin = signed.to(self.device, self.dtype)

    # cache -----------------------------------------------------------------------------------

    def allocate_cache(self, num_blocks: int, block_size: int) -> None:
        """Zeroed K/V storage for ``num_blocks`` blocks per layer (zeros: padded reads must be finite)."""
        a = self.args
        shape = (num_blocks * block_size, a.num_kv_heads, a.head_dim)
        self.block_size = block_size
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(a.num_layers)]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(a.num_layers)]

    def copy_blocks(self, sources: torch.Tensor, targets: torch.Tensor) -> None:
        """Copy whole blocks (slot indices of every position of each block, in matching order)."""
        for cache in (*self.k_cache, *self.v_cache):
            cache.index_copy_(0, targets, cache.index_select(0, sources))

    def parameter_bytes(self) -> int:
        """Bytes of every weight as stored (int8 ones included); tied weights count once."""
        seen: set[int] = set()
        total = self.embed.memory(seen) + self.lm_head.memory(seen)
        tensors = [self.final_norm, self.final_norm_bias, self.position_embed]
        for layer in self.layers:
            tensors.extend((layer.norm1, layer.norm1_bias, layer.norm2, layer.norm2_bias))
            total += sum(part.memory(seen) for part in (layer.qkv, layer.out, layer.up, layer.down))
        for tensor in tensors:
            if tensor is not None and tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
        return total

    # forward ---------------------------------------------------------------------------------

    def forward(self, step: StepInputs) -> torch.Tensor:
        """Logits ``[len(step.sample_rows), vocab]`` for the sampled rows, writing every token's K/V."""
        a = self.args
        llama = a.family == "llama"
        x = self.embed(step.input_ids)
        if self.position_embed is not None:
            x = x + F.embedding(step.positions, self.position_embed)
        tokens = x.shape[0]
        heads, kv_heads, hd = a.num_heads, a.num_kv_heads, a.head_dim
        if llama:
            cos = self.rope_cos.index_select(0, step.positions).unsqueeze(1)
            sin = self.rope_sin.index_select(0, step.positions).unsqueeze(1)
        shape = (a.hidden_size,)
        for index, layer in enumerate(self.layers):
            if llama:
                h = F.rms_norm(x, shape, layer.norm1, a.norm_eps)
            else:
                h = F.layer_norm(x, shape, layer.norm1, layer.norm1_bias, a.norm_eps)
            qkv = layer.qkv(h)
            if llama:
                qk = qkv[:, : (heads + kv_heads) * hd].view(tokens, heads + kv_heads, hd)
                qk = qk * cos + torch.roll(qk, hd // 2, -1) * sin
                q, k = qk[:, :heads], qk[:, heads:]
            else:
                q = qkv[:, : heads * hd].view(tokens, heads, hd)
                k = qkv[:, heads * hd : (heads + kv_heads) * hd].view(tokens, kv_heads, hd)
            v = qkv[:, (heads + kv_heads) * hd :].view(tokens, kv_heads, hd)
            attended = self._attend(q, k, v, self.k_cache[index], self.v_cache[index], step, layer.scale)
            x = x + layer.out(attended)
            if llama:
                h = F.rms_norm(x, shape, layer.norm2, a.norm_eps)
                gate, up = layer.up(h).chunk(2, dim=-1)
                h = F.silu(gate) * up
            else:
                h = F.layer_norm(x, shape, layer.norm2, layer.norm2_bias, a.norm_eps)
                h = F.gelu(layer.up(h), approximate=a.gelu_approximate)
            x = x + layer.down(h)
        x = x.index_select(0, step.sample_rows)
        if not x.shape[0]:  # nothing sampled (a prompt chunk, a draft mirroring the target)
            return x.new_empty(0, a.vocab_size)
        if llama:
            x = F.rms_norm(x, shape, self.final_norm, a.norm_eps)
        else:
            x = F.layer_norm(x, shape, self.final_norm, self.final_norm_bias, a.norm_eps)
        return self.lm_head(x)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        step: StepInputs,
        scale: float,
    ) -> torch.Tensor:
        tokens, heads, hd = q.shape
        kv_heads = k.shape[1]
        group = heads // kv_heads
        k_cache.index_copy_(0, step.write_slots, k)
        v_cache.index_copy_(0, step.write_slots, v)
        out = q.new_empty(tokens, heads, hd)
        for decodes in step.decode_groups:
            n, length, t = decodes.count, decodes.length, decodes.queries
            stop = decodes.offset + n * t
            keys = self._gather(self._keys, k_cache, decodes.kv_index)
            values = self._gather(self._values, v_cache, decodes.kv_index)
            keys = keys.view(n, length, kv_heads, hd).transpose(1, 2)
            values = values.view(n, length, kv_heads, hd).transpose(1, 2)
            # The heads of a KV group act as that group's queries (no K/V repeat); with several tokens
            # per sequence, query row ``token * group + head`` of each KV head.
            if t == 1:
                grouped = q[decodes.offset : stop].view(n, kv_heads, group, hd)
            else:
                grouped = q[decodes.offset : stop].view(n, t, kv_heads, group, hd).transpose(1, 2)
                grouped = grouped.reshape(n, kv_heads, t * group, hd)
            result = F.scaled_dot_product_attention(
                grouped, keys, values, attn_mask=decodes.mask, scale=scale
            )
            if t == 1:
                out[decodes.offset : stop] = result.reshape(n, heads, hd)
            else:
                result = result.view(n, kv_heads, t, group, hd).transpose(1, 2)
                out[decodes.offset : stop] = result.reshape(n * t, heads, hd)
        for chunk in step.prefills:
            stop = chunk.offset + chunk.length
            if chunk.kv_index is None:
                keys, values = k[chunk.offset : stop], v[chunk.offset : stop]
            else:
                keys = self._gather(self._keys, k_cache, chunk.kv_index)
                values = self._gather(self._values, v_cache, chunk.kv_index)
            result = F.scaled_dot_product_attention(
                q[chunk.offset : stop].transpose(0, 1).unsqueeze(0),
                keys.transpose(0, 1).unsqueeze(0),
                values.transpose(0, 1).unsqueeze(0),
                attn_mask=chunk.mask,
                is_causal=chunk.mask is None,
                scale=scale,
                enable_gqa=group > 1,
            )
            out[chunk.offset : stop] = result[0].transpose(0, 1)
        return out.view(tokens, heads * hd)

    @staticmethod
    def _gather(scratch: _Scratch, cache: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``cache[index]``, written into ``scratch`` (valid until the next gather into it)."""
        return torch.index_select(cache, 0, index, out=scratch.view(index.shape[0], *cache.shape[1:]))
