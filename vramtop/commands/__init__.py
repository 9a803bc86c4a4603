"""One module per subcommand; each exposes a ``run_*`` function returning an exit code."""
