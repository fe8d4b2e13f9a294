"""camn: CAMN (CIKM 2022) and its baselines for CTR prediction from behaviour sequences."""

__version__ = "0.1.0"
