#!/usr/bin/env bash
# The suite on two other "CPUs": the vector units and thread counts that decide
# rounding and summation order, switched through the libraries' own dispatch settings.
#   narrow: 1 thread, no AVX anywhere (torch's scalar kernels, oneDNN SSE4.1, MKL's
#           compatible path, OpenBLAS Nehalem kernels, numpy's baseline SIMD, OpenCV SSE2)
#   wide2:  2 threads everywhere, AVX2 kernels (another vector width and reduction order)
# Usage: tests/portability/run.sh [narrow|wide2|both] [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/../.."
which="${1:-both}"
shift || true
python="${PYTHON:-.venv/bin/python}"

narrow() {
  env VPIPE_TEST_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_CBWR=COMPATIBLE \
    OPENBLAS_CORETYPE=Nehalem NPY_DISABLE_CPU_FEATURES="X86_V4 X86_V3" \
    OPENCV_CPU_DISABLE=AVX,AVX2,FMA3,AVX_512F,AVX512_SKX,AVX512_COMMON,AVX512_ICL,AVX512_CLX,AVX512_CNL,AVX512_KNL,AVX512_KNM,SSE4_1,SSE4_2,POPCNT,SSSE3 \
    "$python" -m pytest -q -p no:cacheprovider "$@"
}

wide2() {
  env VPIPE_TEST_THREADS=2 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 \
    OPENBLAS_CORETYPE=Haswell NPY_DISABLE_CPU_FEATURES="X86_V4" \
    "$python" -m pytest -q -p no:cacheprovider "$@"
}

case "$which" in
  narrow) narrow "$@" ;;
  wide2) wide2 "$@" ;;
  both) narrow "$@" && wide2 "$@" ;;
  *) echo "usage: $0 [narrow|wide2|both] [pytest args...]" >&2; exit 2 ;;
esac
