"""Subcommands of `stem`, one module each, registered in `stem.cli`."""
