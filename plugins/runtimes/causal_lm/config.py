"""Reading a checkpoint's ``config.json`` (Hugging Face field names) into one architecture description.

Two families are understood: Llama-style decoders (``llama``, ``mistral``, ``qwen2``: RoPE, RMSNorm,
grouped-query attention, SwiGLU) and GPT-2 (learned positions, LayerNorm, fused QKV, GELU).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ladle import ConfigError

__all__ = ["LLAMA_TYPES", "ModelArgs", "read_config"]

LLAMA_TYPES = frozenset({"llama", "mistral", "qwen2"})
GPT2_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


@dataclass(frozen=True)
class ModelArgs:
    """The architecture, whatever the family; fields a family does not use keep their defaults."""

    family: Literal["llama", "gpt2"]
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool = False
    output_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    gelu_approximate: str = "tanh"
    scale_attn_by_layer: bool = False
    eos_token_ids: tuple[int, ...] = ()
    dtype: str | None = None

    @property
    def bytes_per_token_per_element(self) -> int:
        """K and V elements of one token across all layers (multiply by the element size)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def parameter_count(self) -> int:
        d, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = d * (q + 2 * kv) + q * d + (3 if self.family == "llama" else 2) * d * i + 2 * d
        embeddings = v * d * (1 if self.tie_word_embeddings else 2)
        if self.family == "gpt2":
            embeddings += self.max_position_embeddings * d
        return self.num_layers * per_layer + embeddings + d


def _get(config: Mapping[str, Any], path: Path, key: str, kind: type, default: Any = ...) -> Any:
    value = config.get(key, default)
    if value is ...:
        raise ConfigError(f"{path}: missing {key!r}", file=str(path), key=key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (value is not None and not isinstance(value, kind)) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{path}: {key!r} must be {kind.__name__}, got {value!r}", file=str(path), key=key)
    return value


def _eos(config: Mapping[str, Any]) -> tuple[int, ...]:
    value = config.get("eos_token_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return ()


def _rope(config: Mapping[str, Any], path: Path) -> tuple[float, Mapping[str, Any] | None]:
    # transformers >= 5 writes "rope_parameters"; earlier versions "rope_theta" + "rope_scaling".
    parameters = config.get("rope_parameters")
    if isinstance(parameters, Mapping):
        theta = float(parameters.get("rope_theta", config.get("rope_theta", 10000.0)))
        scaling: Mapping[str, Any] | None = parameters
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), Mapping) else None
    kind = str((scaling or {}).get("rope_type", (scaling or {}).get("type", "default")))
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError(
            f"{path}: rope type {kind!r} is not supported (default, linear, llama3)", file=str(path)
        )
    return theta, None if kind == "default" else scaling


def read_config(directory: Path) -> ModelArgs:
    """Parse ``directory/config.json``; raises ``ConfigError`` naming the file and the key."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}", file=str(path)) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object", file=str(path))
    model_type = config.get("model_type")
    dtype = config.get("torch_dtype", config.get("dtype"))
    dtype = dtype if isinstance(dtype, str) else None
    if model_type in LLAMA_TYPES:
        return _llama(config, path, str(model_type), dtype)
    if model_type == "gpt2":
        return _gpt2(config, path, dtype)
    raise ConfigError(
        f"{path}: model_type {model_type!r} is not supported (llama, mistral, qwen2, gpt2)",
        file=str(path),
        key="model_type",
    )


def _llama(config: Mapping[str, Any], path: Path, model_type: str, dtype: str | None) -> ModelArgs:
    hidden = _get(config, path, "hidden_size", int)
    heads = _get(config, path, "num_attention_heads", int)
    kv_heads = _get(config, path, "num_key_value_heads", int, None) or heads
    head_dim = _get(config, path, "head_dim", int, None) or hidden // heads
    if heads % kv_heads:
        raise ConfigError(
            f"{path}: num_attention_heads must be a multiple of num_key_value_heads", file=str(path)
        )
    activation = config.get("hidden_act", "silu")
    if activation != "silu":
        raise ConfigError(f"{path}: hidden_act {activation!r} is not supported (silu)", file=str(path))
    max_positions = _get(config, path, "max_position_embeddings", int, 2048)
    window = config.get("sliding_window")
    if isinstance(window, int) and config.get("use_sliding_window", model_type == "mistral") and window > 0:
        max_positions = min(max_positions, window)  # within the window, sliding attention is full attention
    theta, scaling = _rope(config, path)
    bias = bool(config.get("attention_bias", False))
    return ModelArgs(
        family="llama",
        model_type=model_type,
        vocab_size=_get(config, path, "vocab_size", int),
        hidden_size=hidden,
        num_layers=_get(config, path, "num_hidden_layers", int),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_get(config, path, "intermediate_size", int),
        max_position_embeddings=max_positions,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bias or model_type == "qwen2",
        output_bias=bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        eos_token_ids=_eos(config),
        dtype=dtype,
    )


def _gpt2(config: Mapping[str, Any], path: Path, dtype: str | None) -> ModelArgs:
    hidden = _get(config, path, "n_embd", int)
    heads = _get(config, path, "n_head", int)
    activation = config.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise ConfigError(
            f"{path}: activation_function {activation!r} is not supported ({', '.join(GPT2_ACTIVATIONS)})",
            file=str(path),
        )
    if config.get("scale_attn_weights", True) is not True or config.get("reorder_and_upcast_attn", False):
        raise ConfigError(
            f"{path}: only scale_attn_weights=true, reorder_and_upcast_attn=false are supported"
        )
    return ModelArgs(
        family="gpt2",
        model_type="gpt2",
        vocab_size=_get(config, path, "vocab_size", int),
        hidden_size=hidden,
        num_layers=_get(config, path, "n_layer", int),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=_get(config, path, "n_inner", int, None) or 4 * hidden,
        max_position_embeddings=_get(config, path, "n_positions", int, 1024),
        norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        qkv_bias=True,
        output_bias=True,
        mlp_bias=True,
        gelu_approximate=GPT2_ACTIVATIONS[activation],
        scale_attn_by_layer=bool(config.get("scale_attn_by_inverse_layer_idx", False)),
        eos_token_ids=_eos(config),
        dtype=dtype,
    )
