"""Numerical checks of the paper's analytical claims (not imported by the node pack)."""
