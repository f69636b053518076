"""What checks do with a model on the ranks: the fixed batch, loading the parallel model, its logits and
attention layouts, activation traces, gradients gathered to rank 0, checkpoint saving and consolidation,
the training loop and the checkpoints compared runs load."""
