#!/usr/bin/env bash
# HuBERT Base on LibriSpeech 960 h as in the paper and fairseq's recipe: iteration 1 on MFCC
# k-means units (K=100), iteration 2 on the units (K=500) of iteration 1's layer 6.
# Needs a local LibriSpeech copy and GPUs (fairseq used 32; see conf/ for accum_steps):
#   ./run.sh --local_data_opts "--librispeech_dir /data/LibriSpeech" --ngpu 8
# On a Slurm cluster the 16 feature shards and the k-means labels can run as Slurm jobs:
#   ./run.sh ... --cmd slurm --slurm_opts "--partition cpu --cpus-per-task 4 --time 4:00:00"
# wav2vec 2.0 Base instead:
#   ./run.sh --ssl_type wav2vec2 --pretrain_configs conf/pretrain_wav2vec2_base.yaml ...
set -euo pipefail
cd "$(dirname "$0")"

./ssl.sh \
    --train_set train_960 \
    --valid_set dev_clean \
    --ssl_type hubert \
    --pretrain_configs "conf/pretrain_hubert_base_iter1.yaml conf/pretrain_hubert_base_iter2.yaml" \
    --n_clusters "100 500" \
    --km_layers "6" \
    --km_percent 0.1 \
    --nj 16 \
    "$@"
