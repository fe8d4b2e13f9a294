#!/usr/bin/env bash
# Training and inference samples/s of DIN, DMIN and CAMN alone on one GPU, in fp32 and bf16, at
# batch 2048 and 8192: four runs of benchmarks/throughput.py (each: the three models one after
# the other, one full epoch of Amazon Beauty `sliding` per measurement unless STEPS caps it, the
# GPU's own fp32 (TF32, as the trainer sets it) and bf16 GEMM peak on 8192 x 8192 products).
#
# The device machine has no copy of the data and no package index, so the store travels with the
# working tree as .gpu/beauty-sliding.tgz (git-ignored; about 5 MiB), made here first:
#   camn prepare amazon --reviews reviews_Beauty_5.json.gz --meta meta_Beauty.json.gz \
#     --protocol sliding --out stores/beauty-sliding          # if stores/beauty-sliding is absent
#   mkdir -p .gpu && tar czf .gpu/beauty-sliding.tgz -C stores beauty-sliding
# then run `bash benchmarks/gpu_speed.sh` there with carry [".gpu"]. camn runs from src/ with the
# machine's own python3 and PyTorch (PYTHONPATH); nothing is installed.
#
# Output under $OUT: gpu-speed-<precision>-<batch>.txt (throughput.py's table, ending in its JSON
# line) and gpu_speed.jsonl (the four JSON lines). About 5-7 minutes on an H200 with full
# epochs, most of it process start-up (each measurement is a fresh process); STEPS=50 halves it.
# Environment: STEPS (timed steps per measurement), REPEATS (1), THREADS (4), MODELS
# (din,dmin,camn), STORE (a prepared store instead of the carried one), DEVICE (cuda; cpu
# for a smoke test of this script elsewhere, e.g. DEVICE=cpu STEPS=1 MODELS=din GEMM_SIZE=256
# STORE=...), GEMM_SIZE (8192; a CPU takes ~30 s a product at that size).
set -euo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu-speed}
store=${STORE:-/tmp/stores/beauty-sliding}
mkdir -p "$out" /tmp/stores
[ -d "$store" ] || tar xzf .gpu/beauty-sliding.tgz -C /tmp/stores
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
cap=()
if [ -n "${STEPS:-}" ]; then cap=(--steps "$STEPS"); fi
for precision in fp32 bf16; do
    for batch in 2048 8192; do
        if ! python3 benchmarks/throughput.py --device "${DEVICE:-cuda}" --store "$store" \
            --models "${MODELS:-din,dmin,camn}" --precision "$precision" --batch-size "$batch" \
            --repeats "${REPEATS:-1}" --threads "${THREADS:-4}" --gemm-size "${GEMM_SIZE:-8192}" "${cap[@]}" \
            2>&1 | tee "$out/gpu-speed-$precision-$batch.txt"; then
            echo "gpu_speed.sh: the $precision batch $batch run failed; going on" >&2
        fi
    done
done
for f in "$out"/gpu-speed-*.txt; do tail -n 1 "$f" | grep "^{" || true; done >"$out/gpu_speed.jsonl"
