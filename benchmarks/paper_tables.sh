#!/usr/bin/env bash
# The paper's tables on real data: 11 models x 3 datasets x 5 seeds (docs/results.md).
# Usage: benchmarks/paper_tables.sh STORES_DIR OUT_DIR [extra camn benchmark options]
# STORES_DIR holds prepared stores beauty-last, beauty-sliding, ml100k-sliding, made by:
#   camn prepare amazon --reviews ../shared/data/amazon_beauty_5core/mcauley2014/reviews_Beauty_5.json.gz \
#       --meta ../shared/data/amazon_beauty_5core/mcauley2014/meta_Beauty.json.gz --protocol last --out STORES_DIR/beauty-last
#   (the same with --protocol sliding --out STORES_DIR/beauty-sliding)
#   camn prepare movielens --path ../shared/data/movielens_100k --protocol sliding --out STORES_DIR/ml100k-sliding
set -euo pipefail
stores=$1 out=$2
shift 2
python3 -m camn benchmark \
    --data "$stores/beauty-last" "$stores/beauty-sliding" "$stores/ml100k-sliding" \
    --models all --seeds 5 --out "$out" "$@"
