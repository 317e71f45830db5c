"""Subcommands of the ``ladle`` CLI: each module defines ``configure(parser)`` and ``run(args) -> int``."""
