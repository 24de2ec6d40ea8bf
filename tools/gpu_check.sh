#!/usr/bin/env bash
# `make gpu-check [GPU_ARGS=--quick] [OUT=dir]`: the GPU checks of issue 18 in one command.
#
# On the device machine (no network): installs the wheels carried in .whl/ (--no-index, into
# /tmp/site), runs the tests marked `gpu` and the GPU benchmark rows (benchmarks/gpu.py), writes
# benchmarks/gpu-latest.{json,md} and, where $OUT is set, copies them and the logs there.
# Without CUDA it prints "no CUDA: GPU check skipped" and exits 0: nothing was checked.
# Budget: at most 8 minutes on one H100/H200: limits of 45 s (tests), 215 s (rows), 60 s (loader),
# then the static-shapes test gets what is left (at least 150 s; about 190 s at run E's pace).
# Measured on an H200 on 2026-11-28: run E (make gpu-check) 322 s in all: tests 37 s, rows and profiles 200 s,
# loader rows 48 s; run F: rows 192 s, the other tests about 30 s, and the static-shapes test
# unfinished at 120 s (its compile; it now has a limit of its own). Since run F the rows trade the
# x2 scaling row, three of the four eager profiles and the CUDA-graphs row on the padded batch x4
# for a CUDA-graphs row on an unpadded batch and a profile of it, a HuBERT step with the time-major
# frontend and two more frontend rows (not timed yet; estimated 175-190 s of the rows' 215).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=480  # the whole check, installs included (bash's SECONDS counts from the start)
PY=${PY:-python3}
QUICK=""
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK="--quick" ;;
        *) echo "usage: tools/gpu_check.sh [--quick]" >&2; exit 2 ;;
    esac
done

if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu-check: $PY cannot import torch: nothing was checked" >&2
    exit 1
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA: GPU check skipped (nothing was run on a GPU)"
    exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8 # deterministic cuBLAS for the resume test (set before CUDA starts)
LOGS=$(mktemp -d)
[ -n "${OUT:-}" ] && mkdir -p "$OUT" && LOGS="$OUT"  # logs land where the device tool fetches them, as they are written
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)'

STATIC=tests/gpu/test_static_shapes_gpu.py  # apart and last (below)
timeout 45 "$PY" -m pytest -m gpu tests/gpu --deselect "$STATIC" -q -p no:cacheprovider -o addopts="-ra" \
    --durations=5 2>&1 | tee "$LOGS/gpu-pytest.log"
tests_rc=${PIPESTATUS[0]}
[ "$tests_rc" -eq 5 ] && { echo "pytest collected no gpu tests: that is a failure" >&2; tests_rc=1; }

# the benchmark saves its rows after each stage: a run cut short keeps them. What it saved is told
# by content, not by mtime (a fast run can write within the timestamp tick of a marker file)
rows_before=$(cksum benchmarks/gpu-latest.json 2>/dev/null)
timeout 215 "$PY" -m benchmarks.gpu $QUICK --profile --json benchmarks/gpu-latest.json --md benchmarks/gpu-latest.md \
    2>&1 | tee "$LOGS/gpu-bench.log"
bench_rc=${PIPESTATUS[0]}

# the pretraining loader on this host, pinned memory included: workers per GPU at the rate just measured
timeout 60 "$PY" -m benchmarks --quick --only loader --no-memory --json benchmarks/gpu-loader.json \
    --md benchmarks/gpu-loader.md 2>&1 | tee "$LOGS/gpu-loader.log"
loader_rc=${PIPESTATUS[0]}

if [ -n "${OUT:-}" ]; then  # only what this run wrote: the tracked files hold an earlier run's numbers
    mkdir -p "$OUT"
    # the rows this run saved, complete or (cut short: "Partial" in the table) not
    [ "$(cksum benchmarks/gpu-latest.json 2>/dev/null)" != "$rows_before" ] \
        && cp benchmarks/gpu-latest.json benchmarks/gpu-latest.md "$OUT"/
    [ "$loader_rc" -eq 0 ] && cp benchmarks/gpu-loader.json benchmarks/gpu-loader.md "$OUT"/
fi

# last, the static-shapes test with what is left of the 8 minutes (at least 150 s: the stages above
# have 320 s at most, the install a few): it compiles (inductor, CUDA graphs) a step split into about
# 8 graphs, forward and backward, for 2 shapes, and the rows above are safe in $OUT whatever it does
static_limit=$(( BUDGET_S - SECONDS ))
(( static_limit < 1 )) && static_limit=1  # (timeout 0 would mean no limit at all)
timeout "$static_limit" "$PY" -m pytest -m gpu "$STATIC" -q -p no:cacheprovider -o addopts="-ra" \
    --durations=1 2>&1 | tee "$LOGS/gpu-pytest-static.log"
static_rc=${PIPESTATUS[0]}
[ "$static_rc" -eq 124 ] && echo "the static-shapes test did not finish within its $static_limit s" >&2
[ "$tests_rc" -eq 0 ] && tests_rc=$static_rc
echo "gpu-check: pytest rc=$tests_rc (static shapes rc=$static_rc), benchmark rc=$bench_rc, loader rc=$loader_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$loader_rc" -eq 0 ]
