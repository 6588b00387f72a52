"""Benchmarks that measure a search method against a ground truth, one package each
(`from dnas.benchmarks import nb201_digits`); each ships its table as package data, so an
installed dnas carries it.

  nb201_digits/  NAS-Bench-201's space trained on the embedded digits; the measures behind
                 `python -m dnas.evaluate`
"""
