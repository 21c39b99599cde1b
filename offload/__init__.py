"""The composition root: settings, wiring and the `offload` command line."""
