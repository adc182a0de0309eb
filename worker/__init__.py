"""The GPU worker: model, attention rollout, iterative-erasing engine, batching loop."""
