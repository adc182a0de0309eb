"""Offline work on the model: training, frame sets, evaluation, metrics, plots and the
report. Nothing in serving imports it."""
