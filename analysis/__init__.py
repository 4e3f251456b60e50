"""Numerical checks of the paper's claims, and the tools of its evaluation protocol (CLIP metrics of
edited videos, ``clip_metrics``); not imported by the node pack."""
