"""Learning attention: tasks, the training loop, checkpoints, torch.distributed set-up."""
