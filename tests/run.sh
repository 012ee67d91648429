#!/usr/bin/env bash
# `make test`: every Rust test binary, then the Python tests, each run to the end even when one
# fails (cargo's --no-fail-fast: otherwise the first failing binary hides the rest). The output
# goes to the terminal and to $LOGS/{rust,python}.log; the last line sums both up:
#   test: rust_passed=… rust_failed=… python_passed=… python_failed=… failed=<what failed, or none>
# Exits non-zero if anything failed. Settings come from the Makefile's environment: PY (the
# venv's python), LOGS (a folder for the logs); the SIGLIP_TEST_* variables and cargo's are passed
# through.
set -uo pipefail
: "${PY:?}" "${LOGS:?}"
mkdir -p "$LOGS"
rust_log=$LOGS/rust.log
python_log=$LOGS/python.log

cargo test --release --locked --no-fail-fast 2>&1 | tee "$rust_log"
rust_status=${PIPESTATUS[0]}
"$PY" -m pytest tests/python -q -rfE 2>&1 | tee "$python_log"
python_status=${PIPESTATUS[0]}

# Rust: "Running <binary>" opens each binary's output; "test <name> ... FAILED" names a failure;
# cargo's closing "error: N targets failed:" lists every binary that failed, so one that crashed
# before printing a result (a signal, an abort) is named too.
read -r rust_passed rust_failed rust_names < <(awk '
  function target(spec) { sub(/^--(test|bin) /, "", spec); sub(/^--/, "", spec); return spec }
  /^ *Running / { bin = ($2 == "unittests") ? ($3 ~ /main\.rs$/ ? "bin" : "lib") : $2; sub(/^tests\//, "", bin); sub(/(\/main)?\.rs$/, "", bin) }
  /^ *Doc-tests / { bin = "doc" }
  /^test result: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^test .* \.\.\. FAILED$/ { n = $0; sub(/^test /, "", n); sub(/ \.\.\. FAILED$/, "", n); names = names (names ? "," : "") bin ":" n; named[bin] = 1 }
  /^error: [0-9]+ targets? failed:/ { listing = 1; next }
  listing && /^ +`/ { t = $0; gsub(/^ +`|`$/, "", t); t = target(t); if (!named[t]) { names = names (names ? "," : "") t ":no-result"; f++ } ; next }
  { listing = 0 }
  END { print p + 0, f + 0, (names ? names : "-") }' "$rust_log")
# A build that fails runs no test at all: say so rather than "0 failed".
if [ "$rust_status" != 0 ] && [ "$rust_failed" = 0 ]; then
  rust_failed=1
  rust_names="cargo-test-exited-$rust_status(see $rust_log)"
fi

# Python: -rfE lists "FAILED <test> - …" and "ERROR <test> - …"; the last line counts them.
read -r python_passed python_failed python_names < <(awk '
  /^(FAILED|ERROR) / { n = $0; sub(/^(FAILED|ERROR) (tests\/python\/)?/, "", n); sub(/ - .*$/, "", n); gsub(/ /, "_", n); names = names (names ? "," : "") "python:" n }
  / (passed|failed|error|errors)( |,|$)/ && / in [0-9.]+s/ {
    p = 0; f = 0
    for (i = 1; i <= NF; i++) { w = $(i+1); gsub(/,/, "", w); if (w == "passed") p = $i; if (w == "failed" || w == "error" || w == "errors") f += $i }
  }
  END { print p + 0, f + 0, (names ? names : "-") }' "$python_log")
if [ "$python_status" != 0 ] && [ "$python_failed" = 0 ]; then
  python_failed=1
  python_names="pytest-exited-$python_status(see $python_log)"
fi

failed=$(printf '%s\n' "$rust_names" "$python_names" | grep -v '^-$' | paste -sd, -)
echo "test: rust_passed=$rust_passed rust_failed=$rust_failed python_passed=$python_passed" \
  "python_failed=$python_failed failed=${failed:-none}"
[ "$rust_status" = 0 ] && [ "$python_status" = 0 ]
