"""Tests of the resurgam Python SDK (unittest).

Run from the repository root: ``python3 -m unittest discover -s python/tests -t python``.
"""
