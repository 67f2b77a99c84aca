"""The shared engine: training loop, evaluation, checkpoints, data feeding, precision."""
