"""Builtin models."""
