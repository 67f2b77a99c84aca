"""Builtin datasets."""
