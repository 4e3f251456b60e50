"""ContextDiff for ComfyUI: cross-modal contextualized diffusion (Yang et al., ICLR 2024).

ComfyUI imports this file and awaits ``comfy_entrypoint``; the nodes live in ``nodes/``, the
method in ``contextdiff/``. Importing ComfyUI only inside the entry point keeps this file
importable without a host (test collectors, packaging tools).
"""


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entry

    return await entry()
