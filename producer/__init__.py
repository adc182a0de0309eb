"""Frame sources and the producer that pushes frames into Redis (never imports torch)."""
