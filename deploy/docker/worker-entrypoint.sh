#!/bin/sh
# Give the loop and its health check one worker id: SCANGUARD_WORKER__ID if set (the
# pod name in Kubernetes), else the container's host name. Then become the worker, so
# SIGTERM from the runtime reaches its drain handler directly.
export SCANGUARD_WORKER__ID="${SCANGUARD_WORKER__ID:-$(hostname)}"
exec python -m worker "$@"
