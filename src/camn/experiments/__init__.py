"""Experiments: the benchmark behind the paper's Tables 2 and 3, its tables and plots, the demo."""
