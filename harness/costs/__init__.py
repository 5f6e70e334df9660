"""Costs f(x; k) with jitted value/derivative and exact references, one module each."""
