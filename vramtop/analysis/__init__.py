"""Pure functions and small value types over samples: no I/O, no UI, no NVML."""
