"""Benchmarks, run from the repository root: ``python -m bench`` (all of them) or ``python -m bench.<name>``
(one). How they reach ComfyUI and the pack: ``devkit``."""
