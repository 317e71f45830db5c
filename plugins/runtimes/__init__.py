"""Built-in runtime plugins."""
