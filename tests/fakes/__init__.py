"""Fakes for CPU-only tests. Each is named as a fake; the GPU suite exercises the real thing."""
