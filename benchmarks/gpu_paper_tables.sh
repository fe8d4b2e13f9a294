#!/usr/bin/env bash
# One device call: the paper's tables on the three real stores, three benchmarks side by side on
# one GPU (each with several processes); each stops itself after BUDGET seconds, and what has
# finished is in its results.csv (restartable). The stores travel as .gpu/*.tgz (git-ignored),
# made here first, since the device has neither ../shared nor polars:
#   for p in last sliding; do camn prepare amazon --reviews ../shared/data/amazon_beauty_5core/mcauley2014/reviews_Beauty_5.json.gz \
#     --meta ../shared/data/amazon_beauty_5core/mcauley2014/meta_Beauty.json.gz --protocol $p --out /tmp/stores/beauty-$p; done
#   camn prepare movielens --path ../shared/data/movielens_100k --protocol sliding --out /tmp/stores/ml100k-sliding
#   mkdir -p .gpu && for s in beauty-last beauty-sliding ml100k-sliding; do tar czf .gpu/$s.tgz -C /tmp/stores $s; done
# then run `BUDGET=270 bash benchmarks/gpu_paper_tables.sh` on the device with carry [".gpu"].
set -u
BUDGET=${BUDGET:-290}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
mkdir -p /tmp/stores "$out" && for f in .gpu/*.tgz; do tar xzf "$f" -C /tmp/stores; done
nvidia-smi -L 2>/dev/null; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"
run() {  # name, then benchmark options
    local name=$1; shift
    timeout "$BUDGET" python3 -m camn benchmark --data "/tmp/stores/$name" --models all --seeds 5 \
        --device "${DEVICE:-cuda}" --threads 1 --out "/tmp/bench/$name" "$@" >"$out/$name.log" 2>&1
    cp "/tmp/bench/$name/results.csv" "$out/$name.csv" 2>/dev/null
}
run beauty-last --batch-size 256 --epochs 10 --patience 2 --jobs 5 &
run beauty-sliding --epochs 4 --patience 1 --jobs 6 &
run ml100k-sliding --epochs 4 --patience 1 --jobs 4 &
wait
wc -l "$out"/*.csv; tail -n 3 "$out"/*.log
