#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time with cargo
# fuzz (libFuzzer, stable Rust: -s none), starting from the seed corpora in
# fuzz/corpus/, and prints each target's executions and coverage. Exits
# non-zero when a target crashes (the input is kept in fuzz/artifacts/).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60, all)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none
status=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  if cargo fuzz run -s none "$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
    tail -n 40 "$log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
  echo "fuzz $t: $result, ${execs:-?} execs in ${secs}s (${rate:-?}/s), $cov"
  rm -f "$log"
done
exit $status
