"""The training engine: the loop (Trainer), building the parts a config names, checkpoints and
resume, the smoke check, the thread count, and rebuilding a finished run's model."""
