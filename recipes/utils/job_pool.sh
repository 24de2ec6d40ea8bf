# The recipes' one job pool (sourced by the templates): run commands in the background, at most
# N at a time, each with its own log; a failed job stops the recipe with the end of its log.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/utils/job_pool.sh"
#   pool_init 4                      # at most 4 jobs at a time
#   pool_run log/a.log speechssl ... # start one (waits for a free slot first)
#   pool_wait                        # wait for every job; exit 1 if any failed
#
# After a failure no new job starts: the running ones finish, then the recipe exits 1 (the
# failed job's own error is in its log, whose last lines are printed). Needs bash >= 4.3 (wait -n).

_pool_nj=1
_pool_pids=()
_pool_logs=()
_pool_failed=0

pool_init() {  # pool_init NJ
    if ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
        echo "pool_init: the number of parallel jobs must be a positive integer, got '$1'" >&2; exit 2
    fi
    _pool_nj=$1; _pool_pids=(); _pool_logs=(); _pool_failed=0
}

_pool_reap() {  # collect the jobs that have finished; note failures
    local i running
    running=" $(jobs -rp | tr '\n' ' ') "
    for i in "${!_pool_pids[@]}"; do
        [[ "${running}" == *" ${_pool_pids[$i]} "* ]] && continue
        if ! wait "${_pool_pids[$i]}"; then
            echo "Error: job failed (log: ${_pool_logs[$i]}); its last lines:" >&2
            tail -n 20 "${_pool_logs[$i]}" >&2
            _pool_failed=1
        fi
        unset "_pool_pids[$i]" "_pool_logs[$i]"
    done
    _pool_pids=("${_pool_pids[@]+"${_pool_pids[@]}"}"); _pool_logs=("${_pool_logs[@]+"${_pool_logs[@]}"}")
}

pool_run() {  # pool_run LOG CMD [ARGS...]: CMD > LOG 2>&1 in the background
    local logfile="$1"; shift
    while [ "${#_pool_pids[@]}" -ge "${_pool_nj}" ]; do
        wait -n 2> /dev/null || true
        _pool_reap
    done
    [ "${_pool_failed}" -eq 0 ] || pool_wait
    mkdir -p "$(dirname "${logfile}")"
    "$@" > "${logfile}" 2>&1 &
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
