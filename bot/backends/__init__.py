"""Model backends: the local transformers model, the deterministic echo backend, and remote servers."""
