"""Runs: a job's life from its checked config to its result.json (checks, assembly, execution, outcome, resume)."""
