"""Tests of generative serving: the paged KV cache, the causal-LM runtime and the continuous batcher."""
