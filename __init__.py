"""ContextDiff for ComfyUI: cross-modal contextualized diffusion (Yang et al., ICLR 2024).

ComfyUI imports this file; the nodes live in ``nodes/``, the method in ``contextdiff/``.
"""

from .nodes import comfy_entrypoint  # noqa: F401

WEB_DIRECTORY = None
