#!/usr/bin/env bash
# Distil and prune the mini HuBERT of ../ssl1 (run it first), compare the three models,
# evaluate them with ../superb1 and export them. 2-core CPU.
#   ./run.sh                              # all stages
#   ./run.sh --stage 3 --stop_stage 3     # only the comparison
set -euo pipefail
cd "$(dirname "$0")"

./compress.sh \
    --teacher ../ssl1/exp/hubert_iter2/checkpoints/last \
    --train_set ../ssl1/data/read/train \
    --valid_set ../ssl1/data/read/dev \
    --distill_config conf/distill.yaml \
    --prune_config conf/prune.yaml \
    --target_sparsity 0.75 \
    --superb_dir ../superb1 \
    --superb_args "--local_data_opts --corpus_dir=../ssl1/data" \
    "$@"
