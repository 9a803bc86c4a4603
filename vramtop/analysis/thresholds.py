"""When each risk rule fires: the thresholds and their defaults (docs/risk.md gives the reason
for each). Setting them from the command line (``--threshold NAME=VALUE``) is the command line's
business: vramtop/commands/options.py."""

from __future__ import annotations

from dataclasses import dataclass

from vramtop.units import GiB, MiB


@dataclass(frozen=True)
class Thresholds:
    """When each rule fires; docs/risk.md says why each default is what it is."""

    margin: float = 0.10  # share of the device kept free for evaluation, a profiler, debugging
    critical_margin: float = 0.10 / 3  # within a third of the margin: one more transient away
    clear_band: float = 0.02  # share of the device the projection must fall below a line to clear
    raise_after: int = 3  # consecutive samples a condition must hold before it is shown
    clear_after: int = 5  # consecutive samples its clear condition must fail before it goes
    event_hold: float = 300.0  # seconds a retry or OOM warning stays after the last one
    leak_warmup_steps: int = 20  # optimizer state, AMP scaler, compiled graphs appear in these
    leak_window: int = 96  # step-boundary points kept per process and GPU
    leak_point_gap: float = 2.0  # seconds between kept points, so the window spans minutes
    leak_min_points: int = 8
    leak_min_span: float = 10.0  # seconds
    leak_monotone: float = 0.8  # share of rising pairs among rising + falling ones
    leak_monotone_clear: float = 0.65
    leak_max_jump: float = 1 / 3  # one increment may make at most this share of the growth
    leak_min_growth: int = 64 * MiB  # fitted growth over the window, above allocator granularity
    leak_min_rate: float = GiB / 3600  # bytes per second (1 GiB/h)
    leak_horizon: float = 24 * 3600.0  # a time-to-OOM beyond this is info, not a warning
    leak_critical: float = 600.0  # a time-to-OOM under this is critical
    frag_ratio: float = 0.5
    frag_clear_ratio: float = 0.4
    frag_min_cache: int = 1 * GiB
    frag_min_share: float = 0.05  # the cache must also be this share of the device
    neighbour_min_bytes: int = 1 * GiB  # a neighbour counts from the smaller of these two
    neighbour_min_share: float = 0.05
    forget_after: float = 60.0  # seconds after which state of a vanished process is dropped
