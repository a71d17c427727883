"""Reports rebuilt from result.json files alone (no torch): `python -m densbench.report DIR`, the UCI section, leaderboards, calibration figures, TensorBoard's HParams declaration."""
