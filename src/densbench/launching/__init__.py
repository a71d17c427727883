"""Launching: what Hydra's launchers and densbench's own need around the jobs (callbacks, the stacked launcher's plan, a parallel sweep's stop)."""
