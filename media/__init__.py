"""Media files in and out (videos with PyAV): IO for the nodes and the trainer, not the method.

The method lives in ``contextdiff/`` (pure PyTorch); this package knows containers and codecs.
"""
