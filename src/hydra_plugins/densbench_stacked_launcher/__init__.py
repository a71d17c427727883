"""densbench's stacked launcher for Hydra (launcher=stacked): see stacked_launcher.py."""
