"""densbench's local launchers for Hydra (launcher=basic, launcher=parallel): see local_launchers.py."""
