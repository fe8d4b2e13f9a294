#!/usr/bin/env bash
# docs/results.md's tables on a GPU machine without the raw data: `camn benchmark --config
# configs/paper-tables.toml` on stores that travel as .gpu/*.tgz (git-ignored), made here with
# the `camn prepare` commands of docs/results.md and `tar czf .gpu/NAME.tgz -C STORES NAME` for
# NAME in beauty-last, beauty-sliding, ml100k-sliding. It stops after BUDGET seconds; the runs
# finished by then are in $OUT/paper-tables/results.jsonl, and the same command resumes there.
set -eu; mkdir -p /tmp/stores && for f in .gpu/*.tgz; do tar xzf "$f" -C /tmp/stores; done && PYTHONPATH=$PWD/src exec timeout "${BUDGET:-560}" python3 -m camn benchmark --config configs/paper-tables.toml --data /tmp/stores/beauty-last /tmp/stores/beauty-sliding /tmp/stores/ml100k-sliding --jobs "${JOBS:-15}" --out "${OUT:-/tmp/out}/paper-tables"
