#!/usr/bin/env bash
# Self-supervised pretraining template (ESPnet style). A corpus's run.sh sets
# options and calls this script; every stage is one `speechssl <command>`.
#
#   Stage 1: data preparation (local/data.sh)            -> data/<set>
#   Stage 2: validate the data dirs, write utt2dur
#   For each iteration n = 1..N (HuBERT, WavLM; wav2vec 2.0 and data2vec have one iteration, no units):
#   Stage 3: features: MFCC (n = 1) or layer L of iteration n-1's model
#            (n = 1 with --km_model and --km_model_layer L: layer L of the --init_from model)
#   Stage 4: k-means fit on the training features (n = 1 with --km_model: `speechssl kmeans import`
#            of that released k-means file instead)
#   Stage 5: k-means labels for every set               -> data/<set>/units_<name>/labels
#            (<name>: mfcc_k<K> for n = 1, <tag>_iter<n-1>_layer<L>_k<K> after; with --km_model
#            <features>_<km file name> for n = 1)
#   Stage 6: unit quality (PNMI, purities) when data/<set>/phone_ctm exists -> exp/unit_quality_<name>.json
#   Stage 7: pretraining                                  -> exp/<tag>_iter<n>/
#            (n = 1 with --init_from: continued pretraining from that model's weights and heads)
#   Stage 8: export the final model (--export_format: hf by default; the mini recipe uses onnx)
#   Stage 9: summary (unit quality per iteration, throughput, where things are)
#
# Each finished step leaves a .done marker, so re-running skips it; delete the
# marker (or the output) to redo it. Feature shards, k-means labels (--nj jobs, each with
# its own log) run on this machine or as Slurm jobs (--cmd slurm --slurm_opts "...").
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0"):${BASH_LINENO[0]}) $*"; }

# General options
stage=1                 # first stage to run
stop_stage=100          # last stage to run
nj=2                    # parallel jobs for data preparation, feature dumping and k-means labelling
cmd=local               # where those jobs run: local (this machine, --nj at a time) | slurm (one sbatch job
                        # each, --nj at a time; logs beside the outputs, see recipes/utils/job_pool.sh)
slurm_opts=""           # sbatch options of every --cmd slurm job, e.g. "--partition cpu --time 2:00:00"
ngpu=0                  # GPUs for pretraining: 0 = CPU, >1 = torchrun DDP on one node
seed=0                  # seed of pretraining
dumpdir=dump            # features go here
expdir=exp              # models go here
tag=""                  # experiment name prefix (default: ssl_type)

# Data
train_set=train         # training data dir name under data/
valid_set=dev           # validation data dir name under data/
local_data_opts=""      # options passed to local/data.sh

# Pretraining
ssl_type=hubert         # hubert | wavlm (units, iterations) | wav2vec2 | data2vec (one iteration, no units)
pretrain_configs=""     # one YAML per iteration (HuBERT, WavLM) or one (wav2vec 2.0, data2vec)
pretrain_args=""        # extra arguments for `speechssl pretrain`, e.g. "--max-steps 100"
noise_set=""            # WavLM: noise data dir under data/ mixed into utterances (`speechssl pretrain --noise`)
init_from=""            # iteration 1 starts from this model (local speechssl dir, transformers dir or
                        # fairseq/s3prl/unilm .pt): `speechssl pretrain --init-from`; nothing is downloaded

# Units (HuBERT, WavLM), one value per iteration
n_clusters="100 500"    # k-means clusters per iteration (iteration 1's is ignored with --km_model)
km_model=""             # iteration 1: a released scikit-learn k-means file (fairseq/HuBERT km.bin), imported
                        # with `speechssl kmeans import` instead of fitting k-means on MFCC
km_model_layer=""       # the layer of --init_from whose features --km_model clusters (empty: MFCC features)
km_layers="6"           # for iteration n >= 2: layer of iteration n-1's model to cluster
km_percent=1.0          # fraction of training utterances k-means is fitted on
frame_shift=0.02        # seconds per unit (the model's frame rate)

# Export
export_format=hf        # format of stage 8: hf | s3prl | fairseq (conv frontend, equal layers) | onnx | torchscript

help_message="Usage: $0 [options]; see the option block of recipes/ssl.sh"
. "$(dirname "${BASH_SOURCE[0]}")/utils/parse_options.sh"
. "$(dirname "${BASH_SOURCE[0]}")/utils/job_pool.sh"

case "${ssl_type}" in
    hubert|wavlm|wav2vec2|data2vec) ;;
    *) log "Error: --ssl_type must be hubert, wavlm, wav2vec2 or data2vec, got '${ssl_type}'"; exit 2 ;;
esac
if [ -z "${pretrain_configs}" ]; then
    log "Error: --pretrain_configs is required (one YAML per iteration)"; exit 2
fi
[ -z "${tag}" ] && tag="${ssl_type}"
read -r -a configs <<< "${pretrain_configs}"
read -r -a clusters <<< "${n_clusters}"
read -r -a layers <<< "${km_layers}"
case "${ssl_type}" in
    hubert|wavlm) num_iters=${#configs[@]}
            if [ "${#clusters[@]}" -lt "${num_iters}" ]; then
                log "Error: --n_clusters has ${#clusters[@]} values for ${num_iters} iterations"; exit 2
            fi
            if [ "${num_iters}" -gt 1 ] && [ "${#layers[@]}" -lt $((num_iters - 1)) ]; then
                log "Error: --km_layers needs one layer per iteration after the first"; exit 2
            fi ;;
    wav2vec2|data2vec) num_iters=1
            if [ -n "${km_model}" ]; then
                log "Error: --km_model is for HuBERT / WavLM units; ${ssl_type} makes its own targets"; exit 2
            fi ;;
esac
if [ -n "${noise_set}" ] && [ "${ssl_type}" != wavlm ]; then
    log "Error: --noise_set is for --ssl_type wavlm (utterance mixing), got '${ssl_type}'"; exit 2
fi
# Nothing here downloads: a model or k-means file must already be on this machine.
local_path() {  # local_path OPTION VALUE: exit 2 unless VALUE is an existing local file or dir
    if [[ "$2" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]]; then
        log "Error: --$1 '$2' is a URL and this recipe never downloads: fetch it yourself, then pass" \
            "the local file or dir, e.g. --$1 /path/to/$(basename "$2")"; exit 2
    fi
    if [ ! -e "$2" ]; then
        log "Error: --$1 $2 does not exist on this machine (a model hub name is not downloaded either):" \
            "pass the local file or dir, e.g. --$1 /path/to/$(basename "$2")"; exit 2
    fi
}
[ -n "${init_from}" ] && local_path init_from "${init_from}"
[ -n "${km_model}" ] && local_path km_model "${km_model}"
if [ -n "${km_model_layer}" ] && { [ -z "${km_model}" ] || [ -z "${init_from}" ]; }; then
    log "Error: --km_model_layer needs --km_model and --init_from (the layer's features come from that model)"
    exit 2
fi

pool_init "${nj}" "${cmd}" "${slurm_opts}"  # checks --nj and --cmd before any stage runs

if [ "${ngpu}" -gt 1 ]; then
    pretrain_cmd="torchrun --standalone --nproc_per_node=${ngpu} -m speechssl pretrain"
else
    pretrain_cmd="speechssl pretrain"
fi
run_stage() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }
done_or() { [ -f "$1" ]; }   # a .done marker exists
done_after() { [ -f "$1" ] && [ "$1" -nt "$2" ]; }  # a .done marker newer than the input it was made from
marker_of() { echo "$(dirname "$1")/.$(basename "$1").done"; }  # exp/x.json -> exp/.x.json.done

if run_stage 1; then
    log "Stage 1: data preparation (local/data.sh ${local_data_opts})"
    if ! done_or data/.prep.done; then
        # shellcheck disable=SC2086
        local/data.sh ${local_data_opts}
        touch data/.prep.done
    fi
fi

if run_stage 2; then
    log "Stage 2: validate data dirs and write utt2dur"
    for dset in "${train_set}" "${valid_set}"; do
        if [ ! -d "data/${dset}" ]; then
            log "Error: data/${dset} is missing: run stage 1"; exit 2
        fi
        done_or "data/${dset}/.validated.done" && continue
        [ -f "data/${dset}/utt2dur" ] || speechssl data durations "data/${dset}" --nj "${nj}"
        speechssl data validate "data/${dset}"
        touch "data/${dset}/.validated.done"
    done
fi

model_of_iter() { echo "${expdir}/${tag}_iter$1/checkpoints/last"; }
# iteration 1's features: MFCC, or with --km_model_layer L layer L of the --init_from model
if [ -n "${km_model_layer}" ]; then
    init_feat_name="$(speechssl downstream name "${init_from}")_layer${km_model_layer}"
else
    init_feat_name=mfcc
fi
# an imported k-means model is named by its file name: hubert_base_ls960_L9_km500.bin -> hubert_base_ls960_L9_km500
km_stem=$(basename "${km_model:-none}"); km_stem=${km_stem%%.*}; km_stem=${km_stem//[^A-Za-z0-9_-]/_}
# what the units of iteration n are: mfcc_k100, hubert_iter1_layer6_k500, ... Units learnt from a
# model carry its tag, so two tagged experiments on the same data never share (or skip) them.
units_name() {
    if [ "$1" -eq 1 ] && [ -n "${km_model}" ]; then echo "${init_feat_name}_${km_stem}"
    elif [ "$1" -eq 1 ]; then echo "mfcc_k${clusters[0]}"
    else echo "${tag}_iter$(($1 - 1))_layer${layers[$(($1 - 2))]}_k${clusters[$(($1 - 1))]}"; fi
}

for ((it = 1; it <= num_iters; it++)); do
    units="units_$(units_name "${it}")"
    pexp="${expdir}/${tag}_iter${it}"
    if [ "${ssl_type}" = hubert ] || [ "${ssl_type}" = wavlm ]; then
        k=${clusters[$((it - 1))]}
        if [ "${it}" -eq 1 ] && [ -n "${km_model_layer}" ]; then
            feat_args="--feature upstream --upstream ${init_from} --layer ${km_model_layer}"; feat_name=${init_feat_name}
        elif [ "${it}" -eq 1 ]; then
            feat_args="--feature mfcc"; feat_name=mfcc
        else
            layer=${layers[$((it - 2))]}
            prev=$(model_of_iter $((it - 1)))
            feat_args="--feature upstream --upstream ${prev} --layer ${layer}"; feat_name="${tag}_iter$((it - 1))_layer${layer}"
        fi
        if run_stage 3; then
            log "Stage 3 (iteration ${it}): ${feat_name} features"
            pool_init "${nj}" "${cmd}" "${slurm_opts}"  # one job per shard, each with its log: a failed one stops the recipe
            for dset in "${train_set}" "${valid_set}"; do
                fdir="${dumpdir}/${feat_name}/${dset}"
                for ((r = 0; r < nj; r++)); do
                    # shellcheck disable=SC2086
                    pool_run "${dumpdir}/${feat_name}/log/features.${dset//\//_}.${r}.log" \
                        speechssl features --data "data/${dset}" ${feat_args} --out "${fdir}" --nshard "${nj}" --rank "${r}"
                done
            done
            pool_wait
        fi
        kmdir="${expdir}/kmeans_iter${it}_${feat_name}_k${k}"
        [ "${it}" -eq 1 ] && [ -n "${km_model}" ] && kmdir="${expdir}/kmeans_iter1_${feat_name}_${km_stem}"
        if run_stage 4; then
            if [ "${it}" -eq 1 ] && [ -n "${km_model}" ]; then
                log "Stage 4 (iteration ${it}): k-means imported from ${km_model} (features ${feat_name})"
                done_or "${kmdir}/.done" || {
                    speechssl kmeans import --model "${km_model}" --out "${kmdir}"
                    touch "${kmdir}/.done"; }
            else
                log "Stage 4 (iteration ${it}): k-means, K=${k} on ${feat_name}"
                done_or "${kmdir}/.done" || {
                    speechssl kmeans fit --feats "${dumpdir}/${feat_name}/${train_set}" --num-clusters "${k}" \
                        --percent "${km_percent}" --seed "${seed}" --out "${kmdir}"
                    touch "${kmdir}/.done"; }
            fi
        fi
        if run_stage 5; then
            log "Stage 5 (iteration ${it}): units -> data/<set>/${units} (logs: ${dumpdir}/${feat_name}/log/${units}.<set>.log)"
            pool_init "${nj}" "${cmd}" "${slurm_opts}"  # one job per set
            todo=()
            for dset in "${train_set}" "${valid_set}"; do
                done_or "data/${dset}/${units}/.done" && continue
                pool_run "${dumpdir}/${feat_name}/log/${units}.${dset//\//_}.log" \
                    speechssl kmeans label --feats "${dumpdir}/${feat_name}/${dset}" --model "${kmdir}" --out "data/${dset}/${units}"
                todo+=("${dset}")
            done
            pool_wait
            for dset in ${todo[@]+"${todo[@]}"}; do touch "data/${dset}/${units}/.done"; done
        fi
        if run_stage 6; then
            quality="${expdir}/unit_quality_$(units_name "${it}").json"
            if [ -f "data/${valid_set}/phone_ctm" ] && done_after "$(marker_of "${quality}")" "data/${valid_set}/${units}/labels"; then
                log "Stage 6 (iteration ${it}): unit quality on ${valid_set}: done (${quality})"
            elif [ -f "data/${valid_set}/phone_ctm" ]; then
                log "Stage 6 (iteration ${it}): unit quality on ${valid_set}"
                speechssl units score --labels "data/${valid_set}/${units}/labels" --names "$(units_name "${it}")" \
                    --alignments "data/${valid_set}/phone_ctm" --frame-shift "${frame_shift}" --out "${quality}"
                touch "$(marker_of "${quality}")"
            else
                log "Stage 6 (iteration ${it}): skipped, data/${valid_set}/phone_ctm does not exist"
            fi
        fi
        units_arg="--units ${units}"
    else
        units_arg=""
    fi
    extra_args=()
    if [ "${it}" -eq 1 ] && [ -n "${init_from}" ]; then extra_args+=(--init-from "${init_from}"); fi
    if [ -n "${noise_set}" ]; then extra_args+=(--noise "data/${noise_set}"); fi
    if run_stage 7; then
        log "Stage 7 (iteration ${it}): pretraining ${configs[$((it - 1))]} -> ${pexp}"
        if [ -n "${noise_set}" ] && [ ! -f "data/${noise_set}/wav.scp" ]; then
            log "Error: data/${noise_set}/wav.scp is missing (--noise_set): run stage 1 or give a noise data dir"
            exit 2
        fi
        if ! done_or "${pexp}/.done"; then
            resume=""; [ -d "${pexp}/checkpoints" ] && resume="--resume"
            # shellcheck disable=SC2086
            ${pretrain_cmd} --config "${configs[$((it - 1))]}" --train "data/${train_set}" --valid "data/${valid_set}" \
                --out "${pexp}" ${units_arg} --seed "${seed}" ${resume} ${extra_args[@]+"${extra_args[@]}"} ${pretrain_args}
            touch "${pexp}/.done"
        fi
    fi
done

final_model=$(model_of_iter "${num_iters}")
if run_stage 8; then
    case "${export_format}" in
        hf) export_out="${expdir}/${tag}_hf" ;;
        onnx) export_out="${expdir}/${tag}.onnx" ;;
        *) export_out="${expdir}/${tag}_${export_format}.pt" ;;
    esac
    # the marker must be newer than the checkpoint `last` points to (a longer run makes a new one)
    if done_after "$(marker_of "${export_out}")" "${final_model}"; then
        log "Stage 8: export of ${final_model} as ${export_format}: done (${export_out})"
    else
        log "Stage 8: export ${final_model} as ${export_format} -> ${export_out}"
        speechssl export --upstream "${final_model}" --format "${export_format}" --out "${export_out}"
        touch "$(marker_of "${export_out}")"
    fi
fi

if run_stage 9; then
    log "Stage 9: summary"
    labels=(); names=(); runs=()
    for ((it = 1; it <= num_iters; it++)); do
        runs+=("${expdir}/${tag}_iter${it}")
        if [ -f "data/${valid_set}/units_$(units_name "${it}")/labels" ]; then
            labels+=("data/${valid_set}/units_$(units_name "${it}")/labels"); names+=("$(units_name "${it}")")
        fi
    done
    scores=()
    if [ "${#labels[@]}" -gt 0 ] && [ -f "data/${valid_set}/phone_ctm" ]; then
        # one table and one PNG for the units of every iteration
        speechssl units score --labels "${labels[@]}" --names "${names[@]}" --alignments "data/${valid_set}/phone_ctm" \
            --frame-shift "${frame_shift}" --out "${expdir}/${tag}_unit_quality.json" --plot "${expdir}/${tag}_unit_quality.png"
        scores=("${expdir}/${tag}_unit_quality.json")
    fi
    speechssl summarize --runs "${runs[@]}" ${scores[@]+--unit-scores "${scores[@]}"} --out "${expdir}/${tag}_summary.md"
    log "Summary written to ${expdir}/${tag}_summary.md; TensorBoard: tensorboard --logdir ${expdir}"
fi
log "Finished."
