#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job: `mrl demo` on Fashion-MNIST. Extra arguments go to mrl demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mrl demo "$@"
