#!/usr/bin/env bash
# `make image-test`: the image `make image` built, run as an operator runs it
# (tests/python/image_check.py: hardened containers, the HEALTHCHECK, Classify/Stream/EmbedImage
# against the host's binary, a compiled package, /metrics, SIGTERM with calls in flight, TLS from
# mounted files, what the image holds).
# Last line: image: size_mb=… start_s=… classify_ok=… drain_ok=… tls_ok=… passed=… failed=…
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/image/lib.sh
: "${PY:?set PY to the venv python, as make does}"
podman image exists "$SIGLIP_IMAGE" || { echo "no image $SIGLIP_IMAGE: run make image" >&2; exit 1; }
mkdir -p build/image
report=build/image/report.json
rm -f "$report"

status=0
SIGLIP_TEST_IMAGE=$SIGLIP_IMAGE SIGLIP_IMAGE_REPORT=$report \
  SIGLIP_PODMAN="$(printf '%q ' "${PODMAN[@]}")" SIGLIP_PODMAN_RUN_FLAGS="$(printf '%q ' "${ULIMITS[@]}")" \
  "$PY" -m pytest tests/python/image_check.py -q -rfE -p no:cacheprovider 2>&1 |
  tee build/image/test.log || status=$?

# Containers a failed run may have left behind.
for name in $(podman ps --all --format '{{.Names}}'); do
  case "$name" in siglip-image-test-*) podman rm --force "$name" > /dev/null || true ;; esac
done

summary=$(tail -1 build/image/test.log)
passed=$(grep -oE '[0-9]+ passed' <<< "$summary" | awk '{n += $1} END {print n + 0}' || true)
failed=$(grep -oE '[0-9]+ (failed|error)' <<< "$summary" | awk '{n += $1} END {print n + 0}' || true)
"$PY" - "$report" "$passed" "$failed" << 'PYTHON'
import json, pathlib, sys
path, passed, failed = sys.argv[1:]
report = json.loads(pathlib.Path(path).read_text()) if pathlib.Path(path).exists() else {}
fields = ["size_mb", "start_s", "classify_ok", "drain_ok", "tls_ok"]
print("image: " + " ".join(f"{k}={report.get(k, 'n/a')}" for k in fields) + f" passed={passed} failed={failed}")
PYTHON
exit "$status"
