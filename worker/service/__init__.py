"""The Redis worker: bootstrap (the composition root), the loop, intake and decoding,
events and artefacts, the atomic publish scripts, health, metrics and the demo."""
