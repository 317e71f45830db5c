"""Writers of small causal-LM checkpoints with random weights, for tests, demos and benchmarks.

A checkpoint directory holds what a Hugging Face model directory holds: ``config.json`` (HF field
names), ``model.safetensors`` (HF parameter names), ``tokenizer.json`` (a byte-level BPE trained here
on a few sentences with the ``tokenizers`` library), ``tokenizer_config.json`` and
``generation_config.json``. Nothing is downloaded. Weights are drawn with numpy and written with
``safetensors.numpy``, so writing needs neither torch nor transformers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHATML_TEMPLATE",
    "SAMPLE_TEXT",
    "gpt2_config",
    "llama_config",
    "write_checkpoint",
    "write_tokenizer",
]

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "A model server answers requests while new ones keep arriving.",
    "Continuous batching lets sequences join and leave at every step.",
    "Paged attention keeps the key and value cache in fixed-size blocks.",
    "A repeated system prompt is computed once and shared by every request.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Numbers like 12, 345 and 6789 appear in text too.",
    "You are a helpful assistant. Answer briefly and politely.",
)
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus(words: int, seed: int) -> list[str]:
    """The sample sentences plus pseudo-words (seeded), so larger vocabularies have merges to learn."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [26 - i for i in range(26)]
    lines = list(SAMPLE_TEXT) * 4
    line: list[str] = []
    for _ in range(words):
        line.append("".join(rng.choices(letters, weights, k=rng.randint(2, 9))))
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    return lines


def write_tokenizer(
    directory: Path,
    *,
    vocab_size: int = 512,
    bos: bool = True,
    chat_template: str | None = CHATML_TEMPLATE,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
) -> int:
    """Train a byte-level BPE; write ``tokenizer.json`` and ``tokenizer_config.json``; return the vocab size.

    ``bos`` adds ``<s>`` in front of every encoding (Llama style); ``</s>`` is the end-of-sequence token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = list(corpus) if corpus is not None else _corpus(max(0, vocab_size - 300) * 6, seed)
    tokenizer.train_from_iterator(lines, trainer)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": bos,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    size: int = tokenizer.get_vocab_size()
    return size


def llama_config(**overrides: Any) -> dict[str, Any]:
    """A small Llama ``config.json`` (grouped-query attention: 4 heads over 2 KV heads)."""
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


def gpt2_config(**overrides: Any) -> dict[str, Any]:
    """A small GPT-2 ``config.json``."""
    config: dict[str, Any] = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 512,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 256,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


def _llama_weights(
    config: Mapping[str, Any], rng: np.random.Generator, dtype: np.dtype[Any]
) -> dict[str, Any]:
    d, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = (
        config["num_attention_heads"],
        config.get("num_key_value_heads", config["num_attention_heads"]),
    )
    hd = config.get("head_dim") or d // heads

    def linear(out: int, inp: int) -> Any:
        return rng.normal(0.0, inp**-0.5, (out, inp)).astype(dtype)

    def norm(n: int) -> Any:
        return (1.0 + rng.normal(0.0, 0.1, n)).astype(dtype)

    weights = {
        "model.embed_tokens.weight": rng.normal(0.0, 0.1, (v, d)).astype(dtype),
        "model.norm.weight": norm(d),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        weights.update(
            {
                p + "input_layernorm.weight": norm(d),
                p + "post_attention_layernorm.weight": norm(d),
                p + "self_attn.q_proj.weight": linear(heads * hd, d),
                p + "self_attn.k_proj.weight": linear(kv * hd, d),
                p + "self_attn.v_proj.weight": linear(kv * hd, d),
                p + "self_attn.o_proj.weight": linear(d, heads * hd),
                p + "mlp.gate_proj.weight": linear(i, d),
                p + "mlp.up_proj.weight": linear(i, d),
                p + "mlp.down_proj.weight": linear(d, i),
            }
        )
        if config.get("attention_bias"):
            for name, size in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd), ("o", d)):
                weights[p + f"self_attn.{name}_proj.bias"] = rng.normal(0.0, 0.1, size).astype(dtype)
    if not config.get("tie_word_embeddings", False):
        weights["lm_head.weight"] = linear(v, d)
    return weights


def _gpt2_weights(
    config: Mapping[str, Any], rng: np.random.Generator, dtype: np.dtype[Any]
) -> dict[str, Any]:
    d, v, positions = config["n_embd"], config["vocab_size"], config["n_positions"]
    i = config.get("n_inner") or 4 * d

    def conv(inp: int, out: int) -> Any:  # GPT-2's Conv1D stores [in, out]
        return rng.normal(0.0, inp**-0.5, (inp, out)).astype(dtype)

    def vector(n: int, mean: float = 0.0) -> Any:
        return (mean + rng.normal(0.0, 0.1, n)).astype(dtype)

    weights = {
        "transformer.wte.weight": rng.normal(0.0, 0.1, (v, d)).astype(dtype),
        "transformer.wpe.weight": rng.normal(0.0, 0.05, (positions, d)).astype(dtype),
        "transformer.ln_f.weight": vector(d, 1.0),
        "transformer.ln_f.bias": vector(d),
    }
    for n in range(config["n_layer"]):
        p = f"transformer.h.{n}."
        weights.update(
            {
                p + "ln_1.weight": vector(d, 1.0),
                p + "ln_1.bias": vector(d),
                p + "attn.c_attn.weight": conv(d, 3 * d),
                p + "attn.c_attn.bias": vector(3 * d),
                p + "attn.c_proj.weight": conv(d, d),
                p + "attn.c_proj.bias": vector(d),
                p + "ln_2.weight": vector(d, 1.0),
                p + "ln_2.bias": vector(d),
                p + "mlp.c_fc.weight": conv(d, i),
                p + "mlp.c_fc.bias": vector(i),
                p + "mlp.c_proj.weight": conv(i, d),
                p + "mlp.c_proj.bias": vector(d),
            }
        )
    return weights


def write_checkpoint(
    directory: Path,
    config: Mapping[str, Any],
    *,
    seed: int = 0,
    dtype: str = "float32",
    tokenizer: bool = True,
    chat_template: str | None = CHATML_TEMPLATE,
) -> Path:
    """Write a random-weight checkpoint for ``config`` (from ``llama_config`` or ``gpt2_config``).

    With ``tokenizer``, a BPE of at most ``config["vocab_size"]`` tokens is trained and the special
    token ids in the config are set from it. ``dtype`` is the weights' dtype (``"float64"`` for exact
    comparisons in tests).
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    if tokenizer:
        size = write_tokenizer(
            directory,
            vocab_size=config["vocab_size"],
            bos=config["model_type"] != "gpt2",
            chat_template=chat_template,
            seed=seed,
        )
        if size > config["vocab_size"]:
            raise ValueError(f"the tokenizer has {size} tokens, more than vocab_size={config['vocab_size']}")
        config["bos_token_id"], config["eos_token_id"] = 0, 1  # "<s>" and "</s>" are trained first
    config["torch_dtype"] = dtype
    rng = np.random.default_rng(seed)
    numpy_dtype = np.dtype(dtype)
    if config["model_type"] == "gpt2":
        weights = _gpt2_weights(config, rng, numpy_dtype)
    else:
        weights = _llama_weights(config, rng, numpy_dtype)
    save_file(
        {name: np.ascontiguousarray(array) for name, array in weights.items()},
        str(directory / "model.safetensors"),
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    eos = config.get("eos_token_id")
    if tokenizer and chat_template is not None:
        eos = [1, SPECIAL_TOKENS.index("<|im_end|>")]  # a chat turn ends the generation too
    generation = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": eos}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return directory
