"""Shipped recipe and target cards (data packages; see pyproject.toml's package-dir)."""
