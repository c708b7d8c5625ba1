"""vit-yoga's library: what train.py, convert_vit_checkpoint.py, the benchmarks and the tests import.

Each module does one job; importing this package imports none of them (and so neither torch nor transformers).
"""
