"""The built-in benchmarks: one module each, defining ``BENCHMARK`` (a registry entry).

``data_sources.registry`` finds every module here with ``pkgutil``; a module without
``BENCHMARK`` is skipped. How to add one: docs/architecture.md.
"""
