"""CLI subcommands, one module each (python -m tieredmem COMMAND)."""
