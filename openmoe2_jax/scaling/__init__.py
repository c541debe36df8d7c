"""Scaling laws: IsoFLOP sweeps over a size ladder (ladder.py), the fits (laws.py), the CLI (__main__.py)."""
