"""Backends that run a cell: ``cpu`` (numba, parallel over seeds x chunks)."""
