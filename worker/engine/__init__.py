"""The serving core, torch and numpy only: model loading, attention capture and rollout,
the decision rules, the continuous-batching erasing engine, preprocessing and the seed
reference. It knows nothing of Redis, settings, the service or training."""
