"""Gradient estimators, one module each; register new ones in ``harness.registry``."""
