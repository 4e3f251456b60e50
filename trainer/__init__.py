"""Headless trainer for ContextDiff adapters and joint models: ``python -m trainer.train --help``."""
