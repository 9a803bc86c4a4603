"""Widgets, one per screen region."""
