"""Builtin hooks."""
