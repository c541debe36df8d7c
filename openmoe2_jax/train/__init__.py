"""Training: optimizer, state, pure train/eval steps, checkpoints, and the loop."""
