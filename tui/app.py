"""Placeholder; the TUI issue builds the app."""
