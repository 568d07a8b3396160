"""Helpers shared by tests (importable as ``helpers`` from the tests folder)."""
