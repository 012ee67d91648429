#!/usr/bin/env bash
# `make image-test`: the image `make image` built, run as an operator runs it
# (tests/python/image_check.py: hardened containers, the HEALTHCHECK, Classify/Stream/EmbedImage
# against the host's binary, /metrics, SIGTERM with calls in flight, TLS from mounted files).
# Last line: image: size_mb=… start_s=… classify_ok=… drain_ok=… tls_ok=… passed=… failed=…
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/image/lib.sh
: "${PY:?set PY to the venv python, as make does}"
podman image exists "$IMAGE" || { echo "no image $IMAGE: run make image" >&2; exit 1; }
mkdir -p build/image
report=build/image/report.json
rm -f "$report"

status=0
SIGLIP_TEST_IMAGE=$IMAGE SIGLIP_IMAGE_REPORT=$report \
  SIGLIP_PODMAN="podman --runtime runc${SIGLIP_IMAGE_STORE:+ --root $SIGLIP_IMAGE_STORE/storage --runroot $SIGLIP_IMAGE_STORE/run}" \
  "$PY" -m pytest tests/python/image_check.py -q -rfE -p no:cacheprovider 2>&1 |
  tee build/image/test.log || status=$?

# Containers a failed run may have left behind.
podman ps --all --format '{{.Names}}' | { grep '^siglip-image-test-' || true; } | xargs -r podman rm --force > /dev/null

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
