#!/usr/bin/env bash
# Create ./.venv (if missing) and install the project with its test tools.
# torch/torchvision are installed first, pinned to the release this project is tested with;
# set TORCH_SPEC to choose another build, e.g. TORCH_SPEC="torch torchvision --index-url ...".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
python -m pip install -q -e ".[dev]"
echo "environment ready: $(python -c 'import torch, monai; print(f"torch {torch.__version__}, monai {monai.__version__}")')"
