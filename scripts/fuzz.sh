#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target (fuzz/fuzz_targets, checks in crates/fuzzing) for
# FUZZ_RUNS executions each (default 1,000,000), growing its corpus in fuzz/corpus/<target>
# from the seeds in fuzz/seeds/<target>, and prints a table: executions, corpus files and
# bytes, new coverage found, seconds. A crash or a failed check stops it, with the input saved in
# fuzz/artifacts/<target>/ (rerun it with `cargo fuzz run <target> <file>`).
#
# The machine's Rust is stable: cargo-fuzz's nightly flags are enabled with RUSTC_BOOTSTRAP=1.
# Without a sanitizer (safe Rust: the fuzzers look for panics, failed checks, hangs and
# runaway memory, which libFuzzer reports as -timeout and -rss_limit_mb violations).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${FUZZ_RUNS:-1000000}
targets=${FUZZ_TARGETS:-"context_token peer_messages gossip signature client_request config"}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -s none -O
rows=()
for target in $targets; do
  mkdir -p "corpus/$target"
  start=$(date +%s)
  log=$(mktemp)
  if ! cargo fuzz run "$target" -s none -O "corpus/$target" "seeds/$target" -- \
      -runs="$runs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' "$log" | tail -1)
  files=$(find "corpus/$target" -type f | wc -l)
  bytes=$(du -sb "corpus/$target" | cut -f1)
  rows+=("$(printf '| %-15s | %10s | %6s | %8s | %7s | %5s |' "$target" "$execs" "$files" "$bytes" "${cov:-?}" "$secs")")
  rm -f "$log"
done
table=$(printf '| target | executions | corpus files | corpus bytes | coverage edges | seconds |\n|---|---:|---:|---:|---:|---:|\n'; printf '%s\n' "${rows[@]}")
echo "$table"
# The table goes to docs/security.md, between the FUZZ markers, with the date and the runs.
cd ..
TABLE="$table" RUNS="$runs" python3 - <<'PY'
import datetime, os, re
path = "docs/security.md"
text = open(path, encoding="utf-8").read()
stamp = f"`make fuzz` on {datetime.date.today()} (FUZZ_RUNS={os.environ['RUNS']}), no crash and no failed check:\n\n"
block = "<!-- FUZZ:BEGIN -->\n" + stamp + os.environ["TABLE"] + "\n<!-- FUZZ:END -->"
text = re.sub(r"<!-- FUZZ:BEGIN -->.*?<!-- FUZZ:END -->", lambda _: block, text, flags=re.S)
open(path, "w", encoding="utf-8").write(text)
PY
