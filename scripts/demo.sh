#!/usr/bin/env bash
# The main job: one model trained across two groups of CPU workers of unequal speed, joined by
# Kaitian, with load adaptation. Group "cpu-fast" (1 worker, a whole core) talks through
# Kaitian's engine inside its group; group "cpu-slow" (2 workers at 0.4 CPU each on the other
# core, cgroup CPU quotas) through torch's gloo, as an NVIDIA group would through NCCL. The
# groups meet in host memory through the engine. `kaitian run` starts the workers with its
# embedded store; examples/train.py is a normal DDP script that selects the backend with one
# word. Each rank's speed is measured before training (static shares), then re-measured while
# training (online re-balancing), with gradients weighted so the math equals full-batch
# training. At the end: the summary, `kaitian monitor`'s view and a plot of shares and step
# times (PNG and SVG) in the log directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

LOG_DIR="${KAITIAN_LOG_DIR:-kaitian-logs/demo}"
FAST="cpu-fast:1"
SLOW="cpu-slow:2"
if [ "$(id -u)" -eq 0 ]; then
  FAST+=":cpu=1.0"
  SLOW+=":cpu=0.4"
else
  echo "==> not root: no CPU quotas (cgroups need root); the groups differ only in library"
fi
if [ "$(nproc)" -ge 2 ]; then
  FAST+=":cpus=0"
  SLOW+=":cpus=1"
fi

echo "==> training on scikit-learn's digits across two heterogeneous groups (kaitian run)"
export KAITIAN_INTRA_BACKEND="cpu-fast=kaitian,cpu-slow=gloo"
status=0
.build/release/kaitian run --job-id demo --log-dir "$LOG_DIR" --group "$FAST" --group "$SLOW" -- \
  .venv/bin/python examples/train.py --backend kaitian --data digits --adaptive online \
  --global-batch 256 --epochs 30 --interval 10 "$@" || status=$?

echo "==> the job as kaitian monitor shows it"
.build/release/kaitian monitor "$LOG_DIR" --once || true
for format in png svg; do
  .build/release/kaitian monitor "$LOG_DIR" --plot "$LOG_DIR/shares-and-step-times.$format" || true
done
echo "==> plot of batch shares and step times: $LOG_DIR/shares-and-step-times.png (and .svg)"
exit "$status"
