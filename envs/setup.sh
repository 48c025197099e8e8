#!/usr/bin/env bash
# Install sweet and everything it runs with into the current Python (a venv or conda env is recommended).
#
# torch is installed first and pinned to the CPU build that laptops and CI use, because any unpinned torch
# requirement resolved first would pull a multi-GB CUDA build. On a GPU cluster, install your CUDA torch first
# and run with SWEET_TORCH=skip (or use envs/sweet.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
if [ "${SWEET_TORCH:-}" != "skip" ]; then
  python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==${SWEET_TORCH:-2.13.0}"
fi
python -m pip install --quiet -e ".[workflow,dev]"
python -c "import sweet, torch, transformers, snakemake; print('sweet', sweet.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
