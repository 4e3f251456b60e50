"""The host side of the method, shared by ``nodes/`` and ``trainer/``: what builds, reads or calls ComfyUI objects.

``contextdiff/`` is the method in plain PyTorch and imports nothing from ComfyUI (tests/repo/test_layers.py
holds it to that). This package turns it into ComfyUI objects: the joint and shapes recipes' models (ComfyUI's
``UNetModel`` and CLIP text model) with their checkpoints, and the family probes that read a ComfyUI
``BaseModel``. Its functions import ComfyUI when called, so the trainer can import it before it has put
ComfyUI on ``sys.path``. ``method.py`` says how it reaches ``contextdiff/`` in both ways the pack is imported.
"""
