#!/usr/bin/env bash
# HuBERT, two iterations, on the embedded synthetic corpus (speechssl synth), sized
# for a 2-core CPU: iteration 1 learns MFCC k-means units, iteration 2 the k-means
# units of iteration 1's layer 2. Options after run.sh override these, e.g.
#   ./run.sh --stage 7 --stop_stage 9
#   ./run.sh --ssl_type wav2vec2 --pretrain_configs conf/pretrain_wav2vec2_tiny.yaml
set -euo pipefail
cd "$(dirname "$0")"

./ssl.sh \
    --train_set read/train \
    --valid_set read/dev \
    --local_data_opts "--hours 3 --nj 2" \
    --ssl_type hubert \
    --pretrain_configs "conf/pretrain_hubert_tiny.yaml conf/pretrain_hubert_tiny.yaml" \
    --n_clusters "50 100" \
    --km_layers "2" \
    --nj 2 \
    --export_format onnx \
    "$@"
