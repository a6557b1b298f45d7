#!/usr/bin/env bash
# Every GPU check of the project in one run, for a machine with a CUDA GPU that is lent
# for minutes: the parity tests, then the benchmarks, each under its own time limit so
# that one hang or failure leaves the others' results.
#
#   bash benchmarks/gpu_session.sh OUTDIR [STEP ...]
#
# Steps, in this order unless named: env, cuda-tests, bench, label-paper, label-demo,
# training, projectors, suite; demo (the whole `vertebra demo` with the networks on the
# GPU; not yet timed there) only when named. Each writes logs/<step>.log, the benchmark
# JSON results go to results/, and at the end both folders are packed into
# OUTDIR/gpu-session.tgz (one file, so a machine that returns only a few files returns
# all of them). The interpreter is $PYTHON (default python3) with this checkout first on
# its path, so it runs from a plain copy of the tree with the packages the machine
# already has (CuPy, torch, Numba, timm, typer, pytest, hypothesis); SimpleITK wheels in
# .whl/ are installed to a scratch folder first if the machine lacks it.
set -u
out=${1:?usage: gpu_session.sh OUTDIR [STEP ...]}
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(env cuda-tests bench label-paper label-demo training
                                  projectors suite)
py=${PYTHON:-python3}
mkdir -p "$out/results" "$out/logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
if ! "$py" -c "import SimpleITK" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target \
        /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

run() {  # run NAME SECONDS CMD...: log to $out/logs/NAME.log, print its status and tail
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@" >"$out/logs/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    tail -n "${TAIL:-12}" "$out/logs/$name.log"
}

for step in "${steps[@]}"; do
    case $step in
    env)
        run env 60 bash -c "nvidia-smi; $py -c 'import sys, cupy, torch, numba, numpy, \
timm; print(sys.version); print(\"cupy\", cupy.__version__, \"cuda runtime\", \
cupy.cuda.runtime.runtimeGetVersion(), \"torch\", torch.__version__, torch.version.cuda, \
\"numba\", numba.__version__, \"numpy\", numpy.__version__, \"timm\", timm.__version__); \
import drrkit, SimpleITK; print(\"cuda_available\", drrkit.cuda_available())'" ;;
    cuda-tests)  # the tests marked cuda: kernels against the CPU backends and closed forms
        TAIL=40 run cuda-tests 240 "$py" -m pytest -m cuda -q -rfE -p no:cacheprovider \
            tests ;;
    bench)  # drrkit bench: the standard scenes, every CUDA configuration
        run bench 150 "$py" -m drrkit.cli bench --backend cuda \
            --json "$out/results/bench-cuda.json" ;;
    label-paper)  # `vertebra label` stage by stage: paper views, ResNet-50 U-Nets
        run label-paper 150 "$py" benchmarks/label_timing.py --device cuda --backend cuda \
            --threads "$(nproc)" --warmup 2 --repeats 5 \
            --out "$out/results/label-timing-paper.json" ;;
    label-demo)  # the same with the demo's networks and 20 localizer views
        run label-demo 150 "$py" benchmarks/label_timing.py --preset cpu-demo \
            --localizer-views 20 --device cuda --backend cuda --threads "$(nproc)" \
            --warmup 2 --repeats 5 --out "$out/results/label-timing-cpu-demo-20loc.json" ;;
    training)  # optimiser steps per second of both U-Nets, float32 and bfloat16
        run training 150 "$py" benchmarks/training.py --device cuda \
            --out "$out/results/training-cuda.json" ;;
    projectors)  # drrkit's kernels per block shape (competitors where installed)
        run projectors 150 "$py" benchmarks/gpu_projectors.py --tune-blocks \
            --out "$out/results" ;;
    suite)  # the whole test suite with a GPU present (auto backends resolve to CUDA)
        TAIL=30 run suite 240 "$py" -m pytest -q -rfE -p no:cacheprovider \
            -n "$(nproc)" tests ;;
    demo)  # `vertebra demo` with the networks on the GPU: scores and the time of each step
        run demo 420 "$py" -m vertebra.cli demo --device cuda --threads "$(nproc)" \
            --no-progress --out /tmp/vertebra-demo-gpu
        cp /tmp/vertebra-demo-gpu/report.json "$out/results/demo-cuda.json" ;;
    *) echo "unknown step $step" ;;
    esac
done
tar czf "$out/gpu-session.tgz" -C "$out" logs results && rm -rf "$out/logs" "$out/results"
echo "=== packed: $out/gpu-session.tgz"
