#!/usr/bin/env bash
# SUPERB-style downstream evaluation template (ESPnet style). A corpus's run.sh sets
# options and calls this script; every stage is one `speechssl <command>` per item.
#
#   Stage 1: data preparation (local/data.sh)     -> data/<task>/{train,dev,test}
#   Stage 2: tokenizer: a sentencepiece model for ASR (only with --asr_units sentencepiece)
#   Stage 3: train a head for each task x upstream  -> exp/<task>_<upstream>/ (dev picks the checkpoint)
#   Stage 4: evaluate each on --eval_split          -> exp/<task>_<upstream>/results_<split>.json
#   Stage 5: report: one table (markdown + JSON) and a PNG of the learned layer weights
#
# Upstreams are 'fbank' (SUPERB's FBANK row) or any checkpoint `speechssl downstream`
# loads (speechssl checkpoint dir, transformers dir, fairseq/s3prl .pt). Each gets a
# short name (--upstream_names, or derived from its path) that names its experiments
# and its column of the report.
#
# Each finished step leaves a .done marker, so re-running skips it; delete the marker
# (or the experiment) to redo it. An interrupted training resumes from its checkpoints.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0"):${BASH_LINENO[0]}) $*"; }

# General options
stage=1                 # first stage to run
stop_stage=100          # last stage to run
ngpu=0                  # GPUs per training: 0 = CPU (or one GPU if visible), >1 = torchrun DDP on one node
nj=1                    # trainings (and evaluations) run at the same time; logs: <exp>.train.log, <exp>/evaluate.log
datadir=data            # task data dirs: <datadir>/<task>/{train,dev,test}
expdir=exp              # experiments go here
local_data_opts=""      # options passed to local/data.sh

# Tasks and upstreams
tasks="pr ks ic sid asv"            # any of: pr asr ks ic sid asv
upstreams="fbank"                   # 'fbank' and/or checkpoint paths, space separated
upstream_names=""                   # one short name per upstream (default: 'fbank', else the run dir's name)
downstream_config="conf/{task}.yaml" # per-task DownstreamConfig YAML; {task} is replaced; a missing file is an error
max_steps=""                        # override every config's max_steps (e.g. 20 for a smoke test)
lr_sweep=""                         # learning rates to sweep, e.g. "1e-2 1e-3 1e-4"; dev picks the best
train_args=""                       # extra arguments for `speechssl downstream train`, e.g. "--set seed=2"

# ASR units (stage 2)
asr_units=char                      # char | sentencepiece
sentencepiece_vocab_size=300        # soft limit (tiny corpora train with fewer pieces)

# Evaluation and report
eval_split=test                     # split scored by stage 4
report_dir=""                       # default: <expdir>/superb_report

help_message="Usage: $0 [options]; see the option block of recipes/superb.sh"
. "$(dirname "${BASH_SOURCE[0]}")/utils/parse_options.sh"

read -r -a task_list <<< "${tasks}"
read -r -a upstream_list <<< "${upstreams}"
read -r -a name_list <<< "${upstream_names}"
[ -z "${report_dir}" ] && report_dir="${expdir}/superb_report"
if [ "${#task_list[@]}" -eq 0 ] || [ "${#upstream_list[@]}" -eq 0 ]; then
    log "Error: --tasks and --upstreams must each name at least one item"; exit 2
fi
for task in "${task_list[@]}"; do
    case "${task}" in
        pr|asr|ks|ic|sid|asv) ;;
        *) log "Error: unknown task '${task}' in --tasks; valid tasks: pr asr ks ic sid asv"; exit 2 ;;
    esac
done
if [ "${#name_list[@]}" -gt 0 ] && [ "${#name_list[@]}" -ne "${#upstream_list[@]}" ]; then
    log "Error: --upstream_names has ${#name_list[@]} names for ${#upstream_list[@]} upstreams"; exit 2
fi
case "${asr_units}" in
    char|sentencepiece) ;;
    *) log "Error: --asr_units must be char or sentencepiece, got '${asr_units}'"; exit 2 ;;
esac
if ! [[ "${nj}" =~ ^[1-9][0-9]*$ ]]; then
    log "Error: --nj must be a positive integer, got '${nj}'"; exit 2
fi

run_stage() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }

# A short name per upstream: fbank; .../<run>/checkpoints/<step> -> <run>; else the file stem / dir name.
default_name() {
    local src="${1%/}"
    case "${src}" in
        fbank) echo fbank ;;
        */checkpoints/*) basename "${src%%/checkpoints/*}" ;;
        *) local base; base=$(basename "${src}"); echo "${base%.*}" ;;
    esac
}
names=()
for ((u = 0; u < ${#upstream_list[@]}; u++)); do
    if [ "${#name_list[@]}" -gt 0 ]; then names+=("${name_list[$u]}"); else names+=("$(default_name "${upstream_list[$u]}")"); fi
done
if [ "$(printf '%s\n' "${names[@]}" | sort | uniq -d)" != "" ]; then
    log "Error: two upstreams get the same name (${names[*]}); pass --upstream_names"; exit 2
fi

# The upstream argument of `speechssl downstream`: 'fbank', or a link <expdir>/upstreams/<name>
# to the checkpoint, so that the report's column is the upstream's name (not e.g. 'last').
upstream_arg() {
    local src="$1" name="$2"
    if [ "${src}" = fbank ]; then echo fbank; return; fi
    if [ ! -e "${src}" ]; then
        log "Error: upstream ${src} does not exist (pass 'fbank' or a checkpoint path)" >&2; return 2
    fi
    local ext=""
    [ -f "${src}" ] && ext=".${src##*.}"
    mkdir -p "${expdir}/upstreams"
    ln -sfn "$(cd "$(dirname "${src}")" && pwd)/$(basename "${src}")" "${expdir}/upstreams/${name}${ext}"
    echo "${expdir}/upstreams/${name}${ext}"
}

task_config() { echo "${downstream_config//\{task\}/$1}"; }

# "1e-3 1e-4" -> "[0.001, 0.0001]": YAML 1.1 reads 1e-3 as a string, so print plain decimals.
lr_list() {
    local out="" lr
    for lr in $1; do
        lr=$(awk -v x="${lr}" 'BEGIN { if (x + 0 <= 0) exit 1; s = sprintf("%.12f", x); sub(/0+$/, "", s); print s }') || {
            log "Error: --lr_sweep value is not a positive number" >&2; return 2; }
        out="${out:+${out}, }${lr}"
    done
    echo "[${out}]"
}

if [ "${ngpu}" -gt 1 ]; then
    train_cmd=(torchrun --standalone "--nproc_per_node=${ngpu}" -m speechssl downstream train)
else
    train_cmd=(speechssl downstream train)
fi

# Run commands as background jobs, at most ${nj} at a time; any failure stops the recipe
# after printing the end of that job's log.
pids=(); pid_logs=()
wait_jobs() {
    local i failed=0
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            log "Error: job failed; last lines of ${pid_logs[$i]}:"; tail -n 20 "${pid_logs[$i]}" >&2; failed=1
        fi
    done
    pids=(); pid_logs=()
    [ "${failed}" -eq 0 ] || exit 1
}
submit() {  # submit LOG CMD...
    local logfile="$1"; shift
    "$@" > "${logfile}" 2>&1 &
    pids+=("$!"); pid_logs+=("${logfile}")
    [ "${#pids[@]}" -lt "${nj}" ] || wait_jobs
}

if run_stage 1; then
    log "Stage 1: data preparation (local/data.sh ${local_data_opts})"
    if [ ! -f "${datadir}/.superb_prep.done" ]; then
        # shellcheck disable=SC2086
        local/data.sh ${local_data_opts}
        touch "${datadir}/.superb_prep.done"
    fi
fi

for task in "${task_list[@]}"; do
    if run_stage 2 || run_stage 3; then
        if [ ! -d "${datadir}/${task}/train" ]; then
            log "Error: ${datadir}/${task}/train is missing: run stage 1 (local/data.sh) first"; exit 2
        fi
        conf=$(task_config "${task}")
        if [ ! -f "${conf}" ]; then
            log "Error: downstream config ${conf} of task ${task} does not exist (--downstream_config)"; exit 2
        fi
    fi
done

asr_args=()
if [ "${asr_units}" = sentencepiece ]; then
    asr_args=(--set asr_units=sentencepiece --set "sentencepiece_vocab_size=${sentencepiece_vocab_size}")
fi
tokenizer_dir="${expdir}/tokenizer_spm${sentencepiece_vocab_size}"
if run_stage 2; then
    if [[ " ${tasks} " == *" asr "* ]] && [ "${asr_units}" = sentencepiece ]; then
        log "Stage 2: sentencepiece model (${sentencepiece_vocab_size} pieces) on ${datadir}/asr/train/text"
        if [ ! -f "${tokenizer_dir}/spm.model" ]; then
            if speechssl downstream tokenizer --help > /dev/null 2>&1; then
                speechssl downstream tokenizer --text "${datadir}/asr/train/text" \
                    --vocab-size "${sentencepiece_vocab_size}" --out "${tokenizer_dir}"
            else
                # Each ASR experiment then trains the same model (same text, same options) itself.
                log "Stage 2: this speechssl has no 'downstream tokenizer'; each ASR experiment trains its own"
            fi
        fi
    else
        log "Stage 2: skipped (no asr task with --asr_units sentencepiece)"
    fi
fi

exp_of() { echo "${expdir}/$1_$2"; }

if run_stage 3; then
    sweep_args=()
    if [ -n "${lr_sweep}" ]; then
        lrs=$(lr_list "${lr_sweep}")
        sweep_args=(--set "lr_sweep=${lrs}")
    fi
    steps_args=()
    [ -n "${max_steps}" ] && steps_args=(--max-steps "${max_steps}")
    for task in "${task_list[@]}"; do
        for ((u = 0; u < ${#upstream_list[@]}; u++)); do
            name="${names[$u]}"; exp=$(exp_of "${task}" "${name}")
            [ -f "${exp}/.train.done" ] && continue
            up=$(upstream_arg "${upstream_list[$u]}" "${name}")
            # The log stays beside EXP: `downstream train` refuses an EXP holding files it did not write.
            log "Stage 3: train ${task} on ${name} -> ${exp} (log: ${exp}.train.log)"
            mkdir -p "${expdir}"
            extra=()
            if [ "${task}" = asr ]; then
                extra=("${asr_args[@]+"${asr_args[@]}"}")
                if [ -f "${tokenizer_dir}/spm.model" ]; then
                    extra+=(--set "sentencepiece_model=${tokenizer_dir}/spm.model")
                fi
            fi
            resume=(); [ -f "${exp}/downstream.yaml" ] && resume=(--resume)
            # shellcheck disable=SC2086
            submit "${exp}.train.log" bash -c '"$@" && touch "'"${exp}"'/.train.done"' _ \
                "${train_cmd[@]}" --task "${task}" --upstream "${up}" --data "${datadir}/${task}" --out "${exp}" \
                --config "$(task_config "${task}")" "${steps_args[@]+"${steps_args[@]}"}" \
                "${sweep_args[@]+"${sweep_args[@]}"}" "${extra[@]+"${extra[@]}"}" "${resume[@]+"${resume[@]}"}" ${train_args}
        done
    done
    wait_jobs
fi

if run_stage 4; then
    for task in "${task_list[@]}"; do
        for name in "${names[@]}"; do
            exp=$(exp_of "${task}" "${name}")
            [ -f "${exp}/.eval_${eval_split}.done" ] && continue
            if [ ! -f "${exp}/best.json" ]; then
                log "Error: ${exp}/best.json is missing: run stage 3 first"; exit 2
            fi
            log "Stage 4: evaluate ${task} on ${name} (${eval_split}) (log: ${exp}/evaluate.log)"
            submit "${exp}/evaluate.log" bash -c '"$@" && touch "'"${exp}/.eval_${eval_split}.done"'"' _ \
                speechssl downstream evaluate --out "${exp}" --split "${eval_split}"
        done
    done
    wait_jobs
fi

if run_stage 5; then
    log "Stage 5: report -> ${report_dir}"
    exps=()
    for task in "${task_list[@]}"; do
        for name in "${names[@]}"; do
            exp=$(exp_of "${task}" "${name}")
            if [ ! -f "${exp}/results_${eval_split}.json" ] && [ ! -f "${exp}/results.json" ]; then
                log "Error: ${exp}/results_${eval_split}.json is missing: run stage 4 first"; exit 2
            fi
            exps+=("${exp}")
        done
    done
    speechssl downstream report --exps "${exps[@]}" --out "${report_dir}" --split "${eval_split}"
    log "Report: ${report_dir}/results.md and results.json$([ -f "${report_dir}/layer_weights.png" ] && echo ", layer_weights.png")"
fi
log "Finished."
