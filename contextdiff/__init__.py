"""ContextDiff as plain PyTorch: the contextualized diffusion of Yang et al., ICLR 2024.

Importable without ComfyUI. Equation numbers refer to arXiv 2402.16627.
"""

from . import process, schedule  # noqa: F401

__version__ = "0.1.0"
