"""Distributions q(x; theta), one module each."""
