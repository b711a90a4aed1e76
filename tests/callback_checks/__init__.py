"""Callbacks, and what a run prints on the console."""
