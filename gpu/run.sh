#!/usr/bin/env bash
# The one script the lent GPU machine runs, in the last of the calls gpu/prepare.sh prints (that call carries
# the last parts and .gpu/run): install onnxruntime-gpu from its parts, unpack the staged models and reference
# logits, run the GPU tests, then the benchmark. Everything it reports goes to $OUT (else build/gpu):
# nvidia-smi.txt, gpu_tests.log, gpu_tests.xml, bench.log, bench.json, bench.md.
# Exit status: 0 when the tests and the benchmark both passed, else the first failure's.
set -uo pipefail
out=${OUT:-build/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
. .gpu/run/install.sh || exit 3   # onnxruntime-gpu under /tmp/ortgpu, PYTHONPATH=/tmp/ortgpu:$PWD
set -uo pipefail                   # install.sh ends with set +e
bash .gpu/run/unpack.sh /tmp/lvvit-gpu || exit 3
# The image's CUDA 13 and cuDNN libraries are pip's nvidia-* packages, which onnxruntime under /tmp/ortgpu does not
# look in (install.sh's preload_dlls() served its own process only): the dynamic linker finds them for every later one.
nvidia_libs=$(python3 -c '
import glob, os, nvidia
print(":".join(sorted({os.path.dirname(p) for root in nvidia.__path__ for p in glob.glob(root + "/**/lib*.so*", recursive=True)})))
') || nvidia_libs=""
export LD_LIBRARY_PATH=${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LVVIT_GPU_REQUIRE=1   # tests/gpu/test_gpu.py fails, naming what is missing, where it would skip for want of CUDA
export LVVIT_GPU_STAGE=/tmp/lvvit-gpu/payload
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lvvit-gpu/site "$LVVIT_GPU_STAGE"/wheels/*.whl || exit 3
export PYTHONPATH=$PYTHONPATH:/tmp/lvvit-gpu/site   # tlt, the authors' model (timm and torch are in the image)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/nvidia-smi.txt"

python3 -m pytest tests/gpu/test_gpu.py -m gpu -v -rA -p no:cacheprovider --junitxml="$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
# BENCH_ARGS: extra gpu/bench.py flags (e.g. --batch-sizes 1,128 to fit a shorter lease)
timeout 300 python3 gpu/bench.py --stage "$LVVIT_GPU_STAGE" --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "gpu tests exit $tests, bench exit $bench"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
