#!/usr/bin/env bash
# bench/device_check.sh OUT_DIR -- the one GPU check: build pyhpc with CUDA for
# the GPU present, run the GPU tests (serial, 2 and 4 ranks) and the GPU
# benchmarks, and leave logs and JSON in OUT_DIR. Its steps' limits add up to 595 s.
#
# For a machine with an NVIDIA GPU, Python 3.12, CUDA 13, nvcc, cupy, CMake,
# scikit-build-core, pybind11, Cython, numpy, matplotlib and pytest(-timeout)
# (scipy, for pyhpc.moe, comes as a wheel if the image lacks it)
# installed, and NO package registry. The packages it lacks come as wheels in a
# folder beside the repo: $PYHPC_WHEELS, default ./.whl (git-ignored). Fetch
# them on a machine with PyPI access, from the repo root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
#     -d .whl mpich==5.0.2 mpi4py==4.1.2 pytest-mpi==0.6 scipy
#
# Output (at most 8 files, two folders deep): OUT/device_check.log (everything),
# OUT/info.json, OUT/tests.log, OUT/bench.tgz (each benchmark's <name>.json and .png).
set -uo pipefail
OUT=${1:?usage: bench/device_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BENCH_OUT=$(mktemp -d /tmp/pyhpc-device-bench.XXXXXX)
cd "$(dirname "$0")/.."
WHEELS=${PYHPC_WHEELS:-.whl}
VENV=${PYHPC_DEVICE_VENV:-/tmp/pyhpc-device-venv}
# GPU benchmarks to run; each capability with a GPU path adds its name here.
GPU_BENCHMARKS=(gpu_copy gpu_pack moe_layers_gpu attention_gpu overlap_gpu)
if [ -n "${PYHPC_DEVICE_BENCHMARKS:-}" ]; then read -ra GPU_BENCHMARKS <<< "$PYHPC_DEVICE_BENCHMARKS"; fi

start=$SECONDS
stamp() { echo "=== [$(( SECONDS - start )) s] $*"; }
failed=0
step() {  # step LIMIT_S NAME CMD... : run with a deadline; record failure, keep going
  local limit=$1 name=$2 rc=0; shift 2
  stamp "$name"
  # SIGTERM first: `pyhpc run` then takes its whole MPI job down with it.
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then echo "!!! $name failed (exit $rc)"; failed=1; fi
}

main() {

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nvcc --version | tail -1 || true
python3 --version

# A venv that sees the image's packages (cupy, numpy, build tools, pip) plus
# the wheels; --without-pip because images often lack ensurepip. The image's
# python3 may itself be a venv, whose packages --system-site-packages does not
# reach: a .pth file adds them (after the venv's own, so the wheels win).
python3 -m venv --system-site-packages --without-pip "$VENV" || return 1
PY="$VENV/bin/python"
python3 -c "import site; print('\n'.join(site.getsitepackages()))" \
  > "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_image_packages.pth"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  step 45 "install wheels from $WHEELS" "$PY" -m pip install -q --no-index --no-deps \
    --no-cache-dir "$WHEELS"/*.whl
else
  echo "!!! no wheels in $WHEELS: MPI (mpich) and pytest-mpi must already be installed"
fi

step 170 "build pyhpc (PYHPC_ENABLE_CUDA=ON, arch ${PYHPC_CUDA_ARCH:-native})" env PYHPC_ENABLE_CUDA=ON \
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
  -Cbuild-dir=build/device -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${PYHPC_CUDA_ARCH:-native}" .
"$VENV/bin/pyhpc" info --json > "$OUT/info.json" || failed=1
cat "$OUT/info.json"

"$PY" -c "import cupy, mpi4py, numpy; from mpi4py import MPI; print('cupy', cupy.__version__, \
  '| numpy', numpy.__version__, '| mpi4py', mpi4py.__version__, '|', MPI.Get_library_version().splitlines()[0])"

# The GPU tests (the CPU suite runs in CI): serial, then the multi-rank ones at 2 and 4 ranks.
gpu_tests() {
  local common=(-p no:cacheprovider -c ../pyproject.toml --rootdir .. -q -rs)
  cd tests || return 1
  local rc=0
  echo "--- serial"; "$PY" -m pytest "${common[@]}" -m "gpu and not mpi" . || rc=1
  for n in 2 4; do
    echo "--- $n ranks"
    "$PY" -m pyhpc run -n "$n" --timeout 120 python -m pytest "${common[@]}" --with-mpi \
      -m "mpi and gpu" . || rc=1
  done
  return $rc
}
step 200 "GPU tests (serial, 2 and 4 ranks)" \
  bash -o pipefail -c "$(declare -f gpu_tests); PY='$PY'; gpu_tests 2>&1 | tee '$OUT/tests.log'"

# Benchmark results go back as one archive (the device tool returns at most 8 files).
# PYHPC_DEVICE_BENCH=full runs them in full mode (more shapes and repetitions).
quick=--quick; [ "${PYHPC_DEVICE_BENCH:-quick}" = full ] && quick=
step 180 "GPU benchmarks: ${GPU_BENCHMARKS[*]}" "$VENV/bin/pyhpc" bench $quick \
  --out "$BENCH_OUT" "${GPU_BENCHMARKS[@]}"
tar -czf "$OUT/bench.tgz" -C "$BENCH_OUT" . || failed=1

stamp "done (failed=$failed)"
return $failed
}

# Everything goes to the log too; the pipeline ends only when tee has written it all.
main 2>&1 | tee -a "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
