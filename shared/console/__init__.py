"""The operator console: a small web app that shows alerts live and records verdicts."""
