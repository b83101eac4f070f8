"""Workflows that touch several models, the queue or the engine.

Views and management commands call one function here; each function is
keyword-only, typed and atomic where it writes.
"""
