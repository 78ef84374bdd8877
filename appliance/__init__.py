"""Reflector appliance: a Python re-implementation of LBRY's reflector.go ("prism")."""

__version__ = "0.1.0"
