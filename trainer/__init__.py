"""Training side of spix: model, superpixel pooling, losses, training loop, checkpoints, metrics."""
