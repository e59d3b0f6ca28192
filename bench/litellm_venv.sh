#!/usr/bin/env bash
# Create a separate venv with LiteLLM's proxy, for the third column of
# bench/overhead.py. Nothing of LiteLLM goes into ctxwarden's own venv or
# dependencies.
#
#   bench/litellm_venv.sh                 # -> /tmp/litellm-venv
#   bench/litellm_venv.sh /path/to/venv   # elsewhere
#   python bench/overhead.py --litellm-python /tmp/litellm-venv/bin/python
#   # or: LITELLM_PYTHON=/tmp/litellm-venv/bin/python python bench/overhead.py
#
# PYTHON=python3.12 bench/litellm_venv.sh picks the interpreter (default python3).
set -euo pipefail
VENV="${1:-/tmp/litellm-venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# litellm[proxy] brings the `litellm` CLI (FastAPI + uvicorn + gunicorn);
# uvloop + httptools: LiteLLM's uvicorn then runs on the same event loop and
# HTTP parser as ctxwarden's in the benchmark (without httptools it uses h11).
"$VENV/bin/python" -m pip install --quiet 'litellm[proxy]' uvloop httptools
"$VENV/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'
echo "LiteLLM ready: python bench/overhead.py --litellm-python $VENV/bin/python"
