#!/usr/bin/env bash
# The replay benchmark on the shared traces (BENCHMARK.md's model).
#
#   ./scripts/benchmark.sh           regenerate BENCHMARKS.md's tables, sweeps and plots
#   ./scripts/benchmark.sh --check   only check the oracle against BENCHMARK.md's
#                                    reference figures (what CI runs)
#
# TRACES (default ../shared/traces) names the folder holding the traces.
set -euo pipefail
cd "$(dirname "$0")/.."
traces=${TRACES:-../shared/traces}
bin=${FLEETSCALE_BIN:-${CARGO_TARGET_DIR:-target}/release/fleetscale}
[ -x "$bin" ] || cargo build --release --quiet

# name | file | column | per-instance | step | boot | reference OPT instance-minutes
cases=(
  "worldcup98|worldcup98_requests_per_minute.csv|count|1000|60s|180s|1469726"
  "azure2019|azure2019_vm_fleet_cpu_mem_5min.csv|cpu_usage|60000|5m|180s|4504300"
)

for c in "${cases[@]}"; do
  IFS='|' read -r _ file _ _ _ _ _ <<<"$c"
  [ -f "$traces/$file" ] || { echo "missing trace $traces/$file (set TRACES to the folder holding it)" >&2; exit 1; }
done

if [ "${1:-}" = "--check" ]; then
  failed=0
  for c in "${cases[@]}"; do
    IFS='|' read -r name file column per step boot expected <<<"$c"
    json=$("$bin" replay --trace "$traces/$file" --column "$column" --per-instance "$per" --step "$step" --boot "$boot" --policy oracle --format json)
    read -r opt replayed < <(python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print(round(r["oracle_instance_minutes"]), round(r["instance_minutes"]))' <<<"$json")
    if [ "$opt" = "$expected" ] && [ "$replayed" = "$expected" ]; then
      echo "ok: $name oracle $opt instance-minutes (reference $expected), replayed through the controller: $replayed"
    else
      echo "FAILED: $name oracle $opt, replayed $replayed, reference $expected" >&2
      failed=1
    fi
  done
  [ "$failed" = 0 ] && echo "benchmark check: 2 passed, 0 failed" || { echo "benchmark check: failed" >&2; exit 1; }
  exit 0
fi

# Seconds since the start time given (date +%s.%N).
since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), ${2:-1}))" "$1" "$(date +%s.%N)"; }

# Runs fleetscale with the arguments after OUT into benchmarks/OUT.txt, and writes its
# time (OUT.seconds) and command (OUT.command) beside it.
timed() {
  local out=$1 start
  shift
  echo "== fleetscale $*" >&2
  start=$(date +%s.%N)
  "$bin" "$@" > "benchmarks/$out.txt"
  since "$start" > "benchmarks/$out.seconds"
  printf '%s\n' "fleetscale $*" | sed "s|$traces|../shared/traces|g" > "benchmarks/$out.command"
  cat "benchmarks/$out.txt"
}

mkdir -p benchmarks
for c in "${cases[@]}"; do
  IFS='|' read -r name file column per step boot expected <<<"$c"
  timed "$name" replay --trace "$traces/$file" --column "$column" --per-instance "$per" --step "$step" --boot "$boot" --policy all --sweep --save "benchmarks/$name-sweep.json" --plot "benchmarks/$name.svg"
done

# Every policy under the realistic clouds (BENCHMARK.md's "Realistic clouds"), baselines
# swept inside each scenario. SCENARIOS (default "aws hostile") and SEED (default 1).
seed=${SEED:-1}
for scenario in ${SCENARIOS:-aws hostile}; do
  for c in "${cases[@]}"; do
    IFS='|' read -r name file column per step boot expected <<<"$c"
    timed "$name-$scenario" replay --trace "$traces/$file" --column "$column" --per-instance "$per" --step "$step" --boot "$boot" --policy all --sweep --cloud "$scenario" --seed "$seed" --save "benchmarks/$name-$scenario-sweep.json"
  done
done

# One dp replay of the whole worldcup98 trace on its own, timed.
IFS='|' read -r name file column per step boot expected <<<"${cases[0]}"
start=$(date +%s.%N)
"$bin" replay --trace "$traces/$file" --column "$column" --per-instance "$per" --step "$step" --boot "$boot" --policy dp > /dev/null
since "$start" 2 > benchmarks/dp-alone.seconds

# The planner's speed (criterion), unless SKIP_CRITERION is set.
if [ -z "${SKIP_CRITERION:-}" ]; then
  cargo bench -p fleetscale-policies --bench planner -- --noplot 2>/dev/null | grep -E '^[a-z].*|time:' > benchmarks/criterion.txt || true
fi

# One dp fleet's first decision at a 10 s tick: time and memory (policies/examples/warm_up.rs).
cargo run --release -q -p fleetscale-policies --example warm_up > benchmarks/warm-up.txt

# The agent with a hundred mock fleets (./scripts/many-fleets.py), unless SKIP_MANY_FLEETS is set.
if [ -z "${SKIP_MANY_FLEETS:-}" ]; then
  FLEETSCALE_BIN="$bin" python3 scripts/many-fleets.py --bin "$bin" --fleets 100 --tick 10 --seconds 120 > /dev/null
fi

# Failover and the cost of coordination on a real etcd (./scripts/failover.py), unless
# SKIP_FAILOVER is set.
if [ -z "${SKIP_FAILOVER:-}" ]; then
  python3 scripts/failover.py --bin "$bin" --agents 2 --fleets 4 --ttl 15 --tick 1 --rounds 3 > /dev/null
fi

python3 scripts/write-benchmarks.py > BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
