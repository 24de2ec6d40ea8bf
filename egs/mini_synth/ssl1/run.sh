#!/usr/bin/env bash
# Self-supervised pretraining on the embedded synthetic corpus (speechssl synth), sized for a
# 2-core CPU. By default HuBERT, two iterations: iteration 1 learns MFCC k-means units,
# iteration 2 the k-means units of iteration 1's layer 2. Options after run.sh override these:
#   ./run.sh --stage 7 --stop_stage 9
#   ./run.sh --ssl_type wavlm        # HuBERT's units and iterations on utterance-mixed input
#                                    # (noise clips from data/noise/train, written by local/data.sh)
#   ./run.sh --ssl_type wav2vec2     # one iteration, no units
#   ./run.sh --ssl_type data2vec     # one iteration, no units (EMA teacher)
#   ./run.sh --cmd slurm --slurm_opts "--partition cpu"   # feature shards and k-means labels as Slurm jobs
# Continued pretraining: iteration 1 starts from a model on this machine (nothing is downloaded)
# and, optionally, labels with its released k-means instead of fitting one on MFCC:
#   ./run.sh --init_from /path/to/hubert.pt --km_model /path/to/km.bin --km_model_layer 6 \
#       --pretrain_configs "conf/<a config of that model's architecture>.yaml ..."
set -euo pipefail
cd "$(dirname "$0")"

# This corpus' configs for the --ssl_type given on the command line (the last one wins, as in ssl.sh).
ssl_type=hubert
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
    [ "${args[i]}" = --ssl_type ] && ssl_type=${args[i + 1]}
done
noise_set=""
case "${ssl_type}" in
    hubert) configs="conf/pretrain_hubert_tiny.yaml conf/pretrain_hubert_tiny.yaml" ;;
    wavlm) configs="conf/pretrain_wavlm_tiny.yaml conf/pretrain_wavlm_tiny.yaml"; noise_set=noise/train ;;
    wav2vec2) configs=conf/pretrain_wav2vec2_tiny.yaml ;;
    data2vec) configs=conf/pretrain_data2vec_tiny.yaml ;;
    *) configs="" ;;  # ssl.sh names the valid types
esac

./ssl.sh \
    --train_set read/train \
    --valid_set read/dev \
    --local_data_opts "--hours 3 --nj 2" \
    --ssl_type "${ssl_type}" \
    --pretrain_configs "${configs}" \
    --noise_set "${noise_set}" \
    --n_clusters "50 100" \
    --km_layers "2" \
    --nj 2 \
    --export_format onnx \
    "$@"
