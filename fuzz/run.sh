#!/usr/bin/env bash
# Runs fuzz targets one after another, each for at most SECONDS_EACH seconds or RUNS inputs,
# whichever comes first, niced, one job, no sanitizer (safe Rust: panics, overflow checks and
# debug assertions are what we look for). New inputs go to fuzz/work/<target>/ (not
# committed); fuzz/corpus/<target>/ holds the committed seeds. Each run's output, with
# libFuzzer's final `#N DONE ... exec/s` line, is in fuzz/logs/<target>.log.
#
#   fuzz/run.sh                 # every target
#   fuzz/run.sh chunk udp       # some
#   SECONDS_EACH=60 fuzz/run.sh # shorter
set -u
cd "$(dirname "$0")"
SECONDS_EACH=${SECONDS_EACH:-600}
RUNS=${RUNS:-10000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_FUZZ:-$PWD/target}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(http_response proxy_request chunk hello server_http udp identity signaling_client session signal_server turn ice_source)
fi
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  start=$(date +%s)
  nice -n 19 cargo +nightly fuzz run -s none "$t" "work/$t" "corpus/$t" -- \
    -jobs=1 -workers=1 -max_total_time="$SECONDS_EACH" -runs="$RUNS" \
    -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
  rc=$?
  # With -jobs, libFuzzer writes the job's own output to fuzz-0.log.
  [ -f fuzz-0.log ] && { cat fuzz-0.log >>"logs/$t.log"; rm -f fuzz-0.log; }
  echo "$t: exit $rc after $(( $(date +%s) - start )) s; $(grep -aE '^#[0-9]+[[:space:]]+DONE' "logs/$t.log" | tail -1)"
done
