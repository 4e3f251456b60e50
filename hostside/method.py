"""The method package (``contextdiff/``) beside this one, whichever way the pack was imported.

ComfyUI imports the pack folder as one package, so this layer is ``<pack>.hostside`` beside
``<pack>.contextdiff``; the trainer and the development tools run with the repository root on
``sys.path``, so it is the top-level ``hostside`` beside ``contextdiff``. Deciding by the package's own
name (not by catching an ImportError) keeps a real import failure inside ``contextdiff/`` visible.
"""

if "." in __package__:
    from ..contextdiff import adapter_io, checkpoint, families, joint_model
else:
    from contextdiff import adapter_io, checkpoint, families, joint_model

__all__ = ["adapter_io", "checkpoint", "families", "joint_model"]
