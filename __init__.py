"""ContextDiff for ComfyUI: cross-modal contextualized diffusion (Yang et al., ICLR 2024).

ComfyUI imports this file and awaits ``comfy_entrypoint``; the nodes live in ``nodes/``, the
method in ``contextdiff/``. Importing ComfyUI only inside the entry point keeps this file
importable without a host (test collectors, packaging tools).
"""

# Served by ComfyUI at /extensions/<this folder>/: the nodes' help pages, web/docs/<NodeId>.md, which the
# frontend's node-library help panel shows. No JavaScript goes in there: the frontend runs every .js under it.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entry

    return await entry()
