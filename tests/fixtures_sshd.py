"""Fixtures: an OpenSSH server on 127.0.0.1 (see the module docstring once written)."""
