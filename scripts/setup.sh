#!/usr/bin/env bash
# Set up a fresh machine: system data sets (where apt is available), a virtual environment in
# .venv with the CPU build of PyTorch, and mrl with every optional part. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
[ -f /usr/share/wordnet/data.noun ] || need_apt+=(wordnet-base)
if [ ${#need_apt[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need_apt[*]} (Debian packages)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: please install ${need_apt[*]} (Debian) or pass --data-dir to mrl" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# The CPU build first: torch>=2.2 in pyproject is then already satisfied and no CUDA build is pulled.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    "${PIP[@]}" install "torch==${TORCH_VERSION:-2.13.0}" 2> >(grep -v "^WARNING: Location" >&2)
fi
"${PIP[@]}" install -e ".[all]" 2> >(grep -v "^WARNING: Location" >&2)
