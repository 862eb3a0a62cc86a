#!/usr/bin/env bash
# Run a timing command on a machine made as quiet as we can make it: background training runs of this checkout
# (`nsr_edge.cli train` started by bench/ jobs, whose working folder is the checkout) are paused (SIGSTOP) for the
# duration, including ones started while it runs (checked every second), and resumed (SIGCONT) after, whatever
# happens; one timing command at a time (a lock), so two benchmarks never time each other. Training budgets are in
# CPU seconds, so a pause costs them wall time only. Other work on the machine is not paused: the 1-minute load
# average before and after is printed to stderr for the docs ("load average stated").
#
#   bench/quiet_run.sh .venv/bin/python bench/dispatch.py ...
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bench/quiet_run.sh COMMAND [ARGS...]" >&2; exit 2; }
LOCK="${NSR_EDGE_TIMING_LOCK:-/tmp/nsr-edge-timing.lock}"
exec 9>"$LOCK"
flock 9
PAUSED_LIST=$(mktemp)
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
# Only python processes running `-m nsr_edge.cli train` (not shells whose command line merely mentions it) in this
# checkout (bench/ jobs start them there): a test suite of another checkout also runs `nsr_edge.cli train`, and
# pausing its subprocesses would stall it.
training() {
  for p in $(pgrep -f '^[^ ]*python[0-9.]* -m nsr_edge\.cli train' || true); do
    [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$ROOT" ] && echo "$p"
  done
  true
}
pause_all() { for p in $(training); do kill -STOP "$p" 2>/dev/null && echo "$p" >> "$PAUSED_LIST"; done; }
keeper=""
child=""
resume() {
  set +e  # a resume step that fails (a process gone, the keeper's exit status) must not stop the others
  if [ -n "$child" ]; then kill "$child" 2>/dev/null; fi
  if [ -n "$keeper" ]; then kill "$keeper" 2>/dev/null; wait "$keeper" 2>/dev/null; fi
  for p in $(sort -u "$PAUSED_LIST"); do kill -CONT "$p" 2>/dev/null || true; done
  rm -f "$PAUSED_LIST"
}
trap resume EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
pause_all
( while sleep 1; do pause_all; done ) 9>&- &
keeper=$!
sleep 5  # let the paused work's cores settle before the load average is read
echo "quiet_run: paused training pids [$(sort -u "$PAUSED_LIST" | tr '\n' ' ')]; load average before:" \
     "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
# In the background and waited for: bash runs a trap only between commands, and `wait` is where a signal lands
set +e
"$@" 9>&- &
child=$!
wait "$child"
rc=$?
child=""
set -e
echo "quiet_run: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit $rc
