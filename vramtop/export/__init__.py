"""The Prometheus exporter (``vramtop export``): the sample the monitor reads, as metric families.

One job per module: ``series`` (a bounded metric family), ``gpu_metrics`` (the GPUs and their
processes), ``torch_metrics`` (each agent's allocator, bill, headroom, step and the warnings),
``dcgm`` (dcgm-exporter's names), ``frame`` (every family of one sample, built once),
``collector`` (the latest frame, served to every scrape), ``server`` (the HTTP listener).
Names, units, labels and bounds: docs/exporter.md.
"""
