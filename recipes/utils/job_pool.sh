# The recipes' one job pool (sourced by the templates): run commands as jobs, at most N at a
# time, each with its own log; a failed job stops the recipe with the end of its log. The jobs
# run here (--cmd local) or on a Slurm cluster (--cmd slurm), as ESPnet's run.pl / slurm.pl.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/utils/job_pool.sh"
#   pool_init 4 local                # at most 4 jobs at a time, on this machine
#   pool_init 4 slurm "-p cpu -t 60" # ... or as Slurm jobs, with these sbatch options
#   pool_init 4 slurm "" exp/q       # ... their scripts in exp/q (default: beside each log, in q/)
#   pool_run log/a.log speechssl ... # start one (waits for a free slot first)
#   pool_wait                        # wait for every job; exit 1 if any failed
#
# Every log starts with the command and where and when it started, and ends with its exit code
# ("# Ended (code 0) at ..."). With slurm, each job is `sbatch --wait` of a script written to
# <log dir>/q/<name>.sh (sbatch's own messages: q/<name>.sbatch.log; in a shared script dir, a
# log one dir deeper is named with its dir: exp/ks_fbank/evaluate.log -> ks_fbank_evaluate). The
# job runs in the current directory with this environment (sbatch exports it), so the speechssl
# of this PATH runs there.
# After a failure no new job starts: the running ones finish, then the recipe exits 1 (the
# failed job's own error is in its log, whose last lines are printed). Needs bash >= 4.3 (wait -n).

_pool_nj=1
_pool_cmd=local
_pool_slurm_opts=""
_pool_qdir=""
_pool_pids=()
_pool_logs=()
_pool_failed=0

pool_init() {  # pool_init NJ [local|slurm] [SBATCH_OPTIONS] [SCRIPT_DIR]
    if ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
        echo "pool_init: the number of parallel jobs must be a positive integer, got '$1'" >&2; exit 2
    fi
    case "${2:-local}" in
        local) ;;
        slurm)
            if ! command -v sbatch > /dev/null; then
                echo "Error: --cmd slurm needs sbatch on PATH (run on a Slurm login node, or --cmd local)" >&2; exit 2
            fi ;;
        *) echo "Error: --cmd must be local or slurm, got '$2'" >&2; exit 2 ;;
    esac
    _pool_nj=$1; _pool_cmd=${2:-local}; _pool_slurm_opts=${3:-}; _pool_qdir=${4:-}
    _pool_pids=(); _pool_logs=(); _pool_failed=0
}

_pool_job() {  # _pool_job LOG: the job's name, then its script dir (one a line)
    if [ -n "${_pool_qdir}" ] && [ "$(dirname "$1")" != "$(dirname "${_pool_qdir}")" ]; then
        # the log's path below the qdir's parent names the job: exp/a/log/x.log and exp/b/log/x.log differ
        local rel
        rel=$(realpath -m --relative-to="$(dirname "${_pool_qdir}")" "$1")
        rel=${rel%.log}; rel=${rel//..\//up_}
        printf '%s\n' "${rel//\//_}" "${_pool_qdir}"
    else
        printf '%s\n' "$(basename "$1" .log)" "${_pool_qdir:-$(dirname "$1")/q}"
    fi
}
_pool_sbatch_log() { local name qdir; { read -r name; read -r qdir; } < <(_pool_job "$1"); echo "${qdir}/${name}.sbatch.log"; }

_pool_reap() {  # collect the jobs that have finished; note failures
    local i running sbatch_log
    running=" $(jobs -rp | tr '\n' ' ') "
    for i in "${!_pool_pids[@]}"; do
        [[ "${running}" == *" ${_pool_pids[$i]} "* ]] && continue
        if ! wait "${_pool_pids[$i]}"; then
            echo "Error: job failed (log: ${_pool_logs[$i]}); its last lines:" >&2
            [ -f "${_pool_logs[$i]}" ] && tail -n 20 "${_pool_logs[$i]}" >&2
            sbatch_log=$(_pool_sbatch_log "${_pool_logs[$i]}")
            if [ "${_pool_cmd}" = slurm ] && [ -s "${sbatch_log}" ]; then
                echo "sbatch said (${sbatch_log}):" >&2; tail -n 5 "${sbatch_log}" >&2
            fi
            _pool_failed=1
        fi
        unset "_pool_pids[$i]" "_pool_logs[$i]"
    done
    _pool_pids=("${_pool_pids[@]+"${_pool_pids[@]}"}"); _pool_logs=("${_pool_logs[@]+"${_pool_logs[@]}"}")
}

pool_run() {  # pool_run LOG CMD [ARGS...]: CMD > LOG 2>&1 as a job (here or through sbatch)
    local logfile="$1" cmdline name logdir qdir
    shift
    while [ "${#_pool_pids[@]}" -ge "${_pool_nj}" ]; do
        wait -n 2> /dev/null || true
        _pool_reap
    done
    [ "${_pool_failed}" -eq 0 ] || pool_wait
    mkdir -p "$(dirname "${logfile}")"
    printf -v cmdline '%q ' "$@"; cmdline=${cmdline% }
    if [ "${_pool_cmd}" = local ]; then
        {
            echo "# ${cmdline}"; echo "# Started at $(date) on $(hostname)"
            "$@" && rc=0 || rc=$?
            echo "# Ended (code ${rc}) at $(date)"; exit "${rc}"
        } > "${logfile}" 2>&1 &
    else
        { read -r name; read -r qdir; } < <(_pool_job "${logfile}")
        logdir=$(cd "$(dirname "${logfile}")" && pwd)
        mkdir -p "${qdir}"; qdir=$(cd "${qdir}" && pwd)
        rm -f "${logfile}"  # a log left by an earlier try must not pass for this one's
        {
            echo "#!/usr/bin/env bash"
            echo "# written by recipes/utils/job_pool.sh; log: ${logfile}"
            echo "cd $(printf '%q' "${PWD}") || exit 1"
            echo "echo $(printf '%q' "# ${cmdline}")"
            echo "echo \"# Started at \$(date) on \$(hostname) (Slurm job \${SLURM_JOB_ID:-?})\""
            echo "${cmdline} && rc=0 || rc=\$?"
            echo "echo \"# Ended (code \${rc}) at \$(date)\"; exit \"\${rc}\""
        } > "${qdir}/${name}.sh"
        # shellcheck disable=SC2086
        sbatch --wait --job-name "${name}" --output "${logdir}/$(basename "${logfile}")" ${_pool_slurm_opts} "${qdir}/${name}.sh" \
            > "$(_pool_sbatch_log "${logfile}")" 2>&1 &
    fi
    _pool_pids+=("$!"); _pool_logs+=("${logfile}")
}

pool_wait() {  # wait for every job; exit 1 if any failed
    while [ "${#_pool_pids[@]}" -gt 0 ]; do
        wait -n 2> /dev/null || true
        _pool_reap
    done
    if [ "${_pool_failed}" -ne 0 ]; then
        _pool_failed=0
        exit 1
    fi
}
