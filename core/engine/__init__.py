"""The engine: runs, the training loop, checkpoints, sampling, evaluation and compare."""
