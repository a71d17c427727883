"""Training: the stacked networks, the LightningModule that wires family and objective, the engine, the loop's settings, checkpoints and loggers."""
