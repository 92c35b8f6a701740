#!/usr/bin/env bash
# What we run on a lent GPU machine (no network there): install the few wheels the
# image lacks (carried in .whl/), run the CUDA tests, then the benchmarks.
# Usage on the GPU machine, from the repository root: bash benchmarks/gpu_checks.sh OUTDIR
set -uo pipefail
out=${1:-/tmp/gpu_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 AFFSTREAM_CACHE=/tmp/affcache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, open_clip, av; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'av', av.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tail -15 | tee "$out/cuda_tests.txt"
for bb in affstream-tiny:random ViT-B-32:random ViT-L-14:random; do
  python3 benchmarks/bench_annotate.py --device cuda --pipeline smoke --backbone "$bb" 2>&1 | tee -a "$out/bench_annotate_cuda.md"
done
python3 benchmarks/bench_annotate.py --device cuda --pipeline smoke --backbone ViT-L-14:random --batch-size 512 2>&1 | tee -a "$out/bench_annotate_cuda.md"
python3 benchmarks/bench_train_step.py --device cuda --steps 200 2>&1 | tee "$out/bench_train_step_cuda.md"
# image-encoder fine-tuning: ViT-L/14 at batch 256, checkpointing off/on, fp32/bf16 (issue 8)
python3 benchmarks/bench_finetune_image.py --device cuda --backbone ViT-L-14:random --batch 256 --steps 5 \
  --json "$out/bench_finetune_image_cuda.json" 2>&1 | tee "$out/bench_finetune_image_cuda.md"
