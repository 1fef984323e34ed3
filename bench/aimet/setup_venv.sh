#!/usr/bin/env bash
# Create (or complete) the isolated AIMET virtualenv used by bench/aimet/*.py.
# Idempotent: pip skips what is already installed at the pinned version.
# Never installs into the project's Python, never pulls a CUDA torch or nvidia-* packages.
set -euo pipefail

VENV=${AIMET_VENV:-/tmp/aimet-venv}
PY=${PYTHON:-python}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check)

# Every later install is constrained to the CPU build of torch, so nothing can swap it.
CONSTRAINTS="$VENV/aimet-constraints.txt"
echo "torch==2.13.0+cpu" > "$CONSTRAINTS"

# 1. CPU torch (a local wheel torch-2.13.0+cpu is on pip's find-links here).
"${PIP[@]}" -c "$CONSTRAINTS" torch==2.13.0

# 2. aimet-onnx itself, without its dependencies.
"${PIP[@]}" --no-deps aimet-onnx==2.42.0

# 3. Its Requires-Dist (aimet_onnx-2.42.0.dist-info/METADATA), by hand. numpy/onnx/onnxruntime
#    are pinned to the versions the project's Python has, so both sides run the same ORT.
"${PIP[@]}" -c "$CONSTRAINTS" \
    numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0 \
    Jinja2==3.1.6 PyYAML==6.0.3 bokeh==3.9.2 hvplot==0.12.2 jsonschema==4.26.0 \
    onnx_ir==1.1.0 onnxscript==0.7.2 osqp==1.1.3 pandas==3.1.1 psutil==7.2.2 \
    pybind11==3.1.0 scikit-learn==1.9.1 scipy==1.17.1 tqdm==4.70.1

# 4. onnx2torch (used only by aimet_onnx.adascale) without its deps: it requires torchvision,
#    whose wheels would pull another torch. aimet_onnx imports fine without torchvision.
"${PIP[@]}" --no-deps onnx2torch==1.5.15

# 5. Check.
"$VENV/bin/python" -c "import aimet_onnx; from aimet_onnx.quantsim import QuantizationSimModel; print('aimet_onnx', aimet_onnx.__version__, 'ok')"
if "$VENV/bin/pip" list 2>/dev/null | grep -qiE '^nvidia-|^torch .*\+cu'; then
    echo "error: a CUDA package got into $VENV" >&2
    exit 1
fi
