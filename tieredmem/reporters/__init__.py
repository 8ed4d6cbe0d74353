"""Reporters: how the commands show what tieredmem.published reads."""
