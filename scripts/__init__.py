"""Entry points of the development tools, run from the repository root as modules:
``python -m scripts.demo`` (what ``scripts/run.sh`` runs), ``python -m scripts.make_workflows``,
``python -m scripts.make_pictures``, ``python -m scripts.reliability_report``,
``python -m scripts.sync_requirements``. How they reach ComfyUI and the pack: ``devkit``."""
