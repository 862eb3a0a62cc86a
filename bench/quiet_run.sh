#!/usr/bin/env bash
# Run a timing command on a machine made as quiet as we can make it: background training runs of this checkout
# (`nsr_edge.cli train`, started by bench/ jobs) are paused (SIGSTOP) for the duration and resumed (SIGCONT) after,
# whatever happens; one timing command at a time (a lock), so two benchmarks never time each other. Training budgets
# are in CPU seconds, so a pause costs them wall time only. The 1-minute load average before and after is printed
# to stderr for the docs ("load average stated").
#
#   bench/quiet_run.sh .venv/bin/python bench/dispatch.py ...
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bench/quiet_run.sh COMMAND [ARGS...]" >&2; exit 2; }
LOCK="${NSR_EDGE_TIMING_LOCK:-/tmp/nsr-edge-timing.lock}"
exec 9>"$LOCK"
flock 9
# Only python processes running `-m nsr_edge.cli train` (not shells whose command line merely mentions it).
paused=$(pgrep -f '^[^ ]*python[0-9.]* -m nsr_edge\.cli train' || true)
resume() { [ -n "$paused" ] && kill -CONT $paused 2>/dev/null || true; }
trap resume EXIT INT TERM
[ -n "$paused" ] && kill -STOP $paused 2>/dev/null || true
sleep 5  # let the paused work's cores settle before the load average is read
echo "quiet_run: paused training pids [${paused//$'\n'/ }]; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
set +e
"$@"
rc=$?
set -e
echo "quiet_run: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit $rc
