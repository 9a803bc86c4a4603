"""Consumers of samples other than the TUI."""
