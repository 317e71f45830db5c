"""ladle built-in plugins."""
