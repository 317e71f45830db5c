"""Built-in router plugins."""
