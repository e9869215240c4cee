"""Train state, optimizers, objectives, jitted steps, the loop and checkpoints."""
