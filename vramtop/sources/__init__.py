"""Producers of :class:`vramtop.model.Sample`."""
