"""Tiny random-weight checkpoints, written once per session (float64: batching must not change a token)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from ladle.testing.lm import gpt2_config, llama_config, write_checkpoint


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-style: RoPE, RMSNorm, grouped-query attention (4 heads over 2 KV heads), SwiGLU."""
    return write_checkpoint(tmp_path_factory.mktemp("llama"), llama_config(), dtype="float64", seed=1)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2: learned positions, LayerNorm, fused QKV, GELU, tied embeddings; no chat template."""
    return write_checkpoint(
        tmp_path_factory.mktemp("gpt2"), gpt2_config(), dtype="float64", seed=2, chat_template=None
    )


@pytest.fixture(scope="session")
def llama_draft(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A draft for ``llama_dir``: its weights plus a little noise, so it agrees about half the time."""
    from .support import write_draft

    return write_draft(llama_dir, tmp_path_factory.mktemp("llama-draft"), noise=0.03)


@pytest.fixture(scope="session")
def llama_shallow_draft(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A draft for ``llama_dir`` made of its first layer only: it is mostly wrong."""
    from .support import write_draft

    return write_draft(llama_dir, tmp_path_factory.mktemp("llama-shallow"), noise=0.0, layers=1)


@pytest.fixture(scope="session")
def gpt2_draft(gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .support import write_draft

    return write_draft(gpt2_dir, tmp_path_factory.mktemp("gpt2-draft"), noise=0.03)
