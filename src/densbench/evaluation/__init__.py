"""Evaluation: proper scores and calibration, recalibration, ensembles and the predictive figures of a trained model."""
