"""Downstream delivery: a dispatcher turns decision events into RQ jobs, one per sink."""
