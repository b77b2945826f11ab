"""Benchmarks for shellgate. ``python -m bench.store_cas`` measures the store's CAS path.

Not part of the shipped package (``shellgate*`` only); install the ``bench`` extra for
matplotlib. Nothing here is imported by ``shellgate``.
"""
