"""Per-job Dramatiq actors, the middleware that guards them, and the dispatch API every trigger uses."""
