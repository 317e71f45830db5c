"""Built-in batcher plugins."""
