#!/usr/bin/env bash
# End-to-end test of rayrelay on a throw-away kind cluster.
#
#  1. create a kind cluster; build both images and load them into it
#  2. install the KubeRay operator (Helm chart kuberay/kuberay-operator) and
#     rayrelay (charts/rayrelay) with Helm
#  3. start MinIO in the cluster, create the credentials Secret, the bucket and
#     upload the example data
#  4. kubectl apply the TrainingJob, wait for Succeeded; apply the
#     ModelDeployment, wait for Ready
#  5. port-forward to the endpoint and run a v2 (Open Inference Protocol) infer
#  6. delete both resources and check that no child objects are left
#     (RayJobs, RayServices, Ray pods)
#
# Needs: docker (with an engine), kind, helm, kubectl, curl, python3.
# Environment knobs:
#   CLUSTER_NAME (rayrelay-e2e)   KEEP_CLUSTER=1 keeps the cluster afterwards
#   SKIP_BUILD=1 uses existing rayrelay-operator:dev / rayrelay-workloads:dev
#   KUBERAY_VERSION (1.4.2)       KIND_NODE_IMAGE (kind's default when empty)
#   TRAIN_TIMEOUT (45m)           SERVE_TIMEOUT (20m)
#   ARTIFACTS_DIR: where diagnostics go on failure (default: a temp dir)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MANIFESTS="$ROOT/tests/e2e/manifests"
CLUSTER_NAME="${CLUSTER_NAME:-rayrelay-e2e}"
KUBERAY_VERSION="${KUBERAY_VERSION:-1.5.0}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-45m}"
SERVE_TIMEOUT="${SERVE_TIMEOUT:-20m}"
OPERATOR_IMAGE="rayrelay-operator:dev"
WORKLOAD_IMAGE="rayrelay-workloads:dev"
SYSTEM_NS="rayrelay-system"
NS="rayrelay-e2e"
NAME="minilm-e2e"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-$(mktemp -d -t rayrelay-e2e.XXXXXX)}"
# Child objects the operator and KubeRay create carry these labels.
CHILD_POD_SELECTORS=("app.kubernetes.io/created-by=kuberay-operator" "app.kubernetes.io/managed-by=rayrelay")
PF_PID=""

# Prefer the tools of the project's venv (make venv installs helm and kubectl there).
export PATH="$ROOT/.venv/bin:$PATH"
export KUBECONFIG="${KUBECONFIG_E2E:-$ARTIFACTS_DIR/kubeconfig}"

log() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }

require() {
  for tool in "$@"; do command -v "$tool" >/dev/null || die "$tool is required but not on PATH"; done
}

diagnostics() {
  log "diagnostics -> $ARTIFACTS_DIR"
  {
    kubectl get nodes -o wide
    kubectl get all,trainingjobs,modeldeployments,rayjobs,rayservices,rayclusters -A -o wide
    kubectl get events -A --sort-by=.lastTimestamp | tail -n 200
    kubectl -n "$NS" describe trainingjob,modeldeployment
    kubectl -n "$NS" get trainingjob,modeldeployment -o yaml
    kubectl -n "$NS" describe rayjobs,rayservices,pods
  } >"$ARTIFACTS_DIR/cluster.txt" 2>&1 || true
  kubectl -n "$SYSTEM_NS" logs -l app.kubernetes.io/name=rayrelay --all-containers --tail=-1 \
    >"$ARTIFACTS_DIR/operator.log" 2>&1 || true
  kubectl -n "$NS" logs -l ray.io/node-type --all-containers --tail=2000 --prefix \
    >"$ARTIFACTS_DIR/ray-pods.log" 2>&1 || true
  tail -n 60 "$ARTIFACTS_DIR/operator.log" >&2 || true
}

cleanup() {
  local rc=$?
  [[ -n "$PF_PID" ]] && kill "$PF_PID" 2>/dev/null || true
  if (( rc != 0 )); then
    diagnostics
  fi
  if [[ "${KEEP_CLUSTER:-0}" == "1" ]]; then
    log "keeping cluster $CLUSTER_NAME (KUBECONFIG=$KUBECONFIG)"
  else
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  fi
  (( rc == 0 )) && log "PASSED" || log "FAILED (rc=$rc); diagnostics in $ARTIFACTS_DIR"
  exit "$rc"
}
trap cleanup EXIT

# wait_phase KIND NAME WANT TIMEOUT: kubectl wait on .status.phase, in short
# slices so that a Failed phase ends the wait at once instead of at the timeout.
wait_phase() {
  local kind=$1 name=$2 want=$3 timeout=$4
  local deadline=$(( $(date +%s) + $(to_seconds "$timeout") ))
  log "waiting up to $timeout for $kind/$name phase=$want"
  while :; do
    if kubectl -n "$NS" wait "$kind/$name" --for=jsonpath='{.status.phase}'="$want" --timeout=30s 2>/dev/null; then
      return 0
    fi
    local phase
    phase=$(kubectl -n "$NS" get "$kind/$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    kubectl -n "$NS" get "$kind/$name" --no-headers 2>/dev/null >&2 || true
    if [[ "$phase" == "Failed" ]]; then
      kubectl -n "$NS" get "$kind/$name" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
      die "$kind/$name is Failed"
    fi
    (( $(date +%s) < deadline )) || die "$kind/$name not $want after $timeout (phase: ${phase:-none})"
  done
}

to_seconds() {
  local t=$1
  case "$t" in
    *h) echo $(( ${t%h} * 3600 )) ;;
    *m) echo $(( ${t%m} * 60 )) ;;
    *s) echo "${t%s}" ;;
    *) echo "$t" ;;
  esac
}

# wait_until_gone DESCRIPTION TIMEOUT_S COMMAND...: until COMMAND prints nothing.
wait_until_gone() {
  local what=$1 timeout=$2; shift 2
  local deadline=$(( $(date +%s) + timeout )) left
  while :; do
    left=$("$@" 2>/dev/null || true)
    [[ -z "$left" ]] && return 0
    (( $(date +%s) < deadline )) || die "$what still present after ${timeout}s: $left"
    kubectl -n "$NS" wait --for=delete $left --timeout=10s >/dev/null 2>&1 || true
  done
}

# ----------------------------------------------------------------- preflight
require docker kind helm kubectl curl python3
docker info >/dev/null 2>&1 || die "no Docker engine (docker info failed)"

# ----------------------------------------------------------------- 1. cluster and images
log "creating kind cluster $CLUSTER_NAME"
kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER_NAME" --config "$MANIFESTS/kind-config.yaml" \
  --kubeconfig "$KUBECONFIG" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  log "building images"
  docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" .
  docker build -f workloads/Dockerfile -t "$WORKLOAD_IMAGE" .
fi
log "loading images into kind"
kind load docker-image --name "$CLUSTER_NAME" "$OPERATOR_IMAGE" "$WORKLOAD_IMAGE"

# ----------------------------------------------------------------- 2. KubeRay and rayrelay
log "installing KubeRay operator $KUBERAY_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
helm repo update kuberay >/dev/null
helm install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait --timeout 5m

log "creating namespaces, the S3 credentials Secret and MinIO"
kubectl create namespace "$SYSTEM_NS"
kubectl create namespace "$NS"
kubectl label namespace "$NS" pod-security.kubernetes.io/warn=restricted >/dev/null
S3_KEY="rayrelay$(python3 -c 'import secrets; print(secrets.token_hex(4))')"
S3_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
for ns in "$SYSTEM_NS" "$NS"; do
  kubectl -n "$ns" create secret generic rayrelay-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$S3_KEY" --from-literal=AWS_SECRET_ACCESS_KEY="$S3_SECRET"
done
kubectl -n "$NS" apply -f "$MANIFESTS/minio.yaml"
kubectl -n "$NS" create configmap e2e-data \
  --from-file=train.jsonl=examples/data/train.jsonl --from-file=validation.jsonl=examples/data/validation.jsonl
kubectl -n "$NS" rollout status deployment/minio --timeout=5m
kubectl -n "$NS" apply -f "$MANIFESTS/minio-setup.yaml"
kubectl -n "$NS" wait job/minio-setup --for=condition=Complete --timeout=5m
kubectl -n "$NS" logs job/minio-setup >&2

log "installing rayrelay (charts/rayrelay)"
# The chart has no dependencies: it installs from the checkout (KubeRay is above).
helm install rayrelay charts/rayrelay --namespace "$SYSTEM_NS" \
  -f "$MANIFESTS/rayrelay-values.yaml" --wait --timeout 5m
kubectl -n "$SYSTEM_NS" rollout status deployment/rayrelay --timeout=3m
kubectl get crd trainingjobs.rayrelay.dev modeldeployments.rayrelay.dev

# ----------------------------------------------------------------- 3. train and serve
log "training"
kubectl -n "$NS" apply -f "$MANIFESTS/trainingjob.yaml"
wait_phase trainingjob "$NAME" Succeeded "$TRAIN_TIMEOUT"
kubectl -n "$NS" get trainingjob "$NAME" -o jsonpath='{.status.artifacts}{"\n"}' >&2

log "serving"
kubectl -n "$NS" apply -f "$MANIFESTS/modeldeployment.yaml"
wait_phase modeldeployment "$NAME" Ready "$SERVE_TIMEOUT"

# ----------------------------------------------------------------- 4. inference (OIP v2)
URL=$(kubectl -n "$NS" get modeldeployment "$NAME" -o jsonpath='{.status.url}')
[[ -n "$URL" ]] || die "ModelDeployment is Ready but has no status.url"
log "endpoint $URL"
# status.url is in-cluster (http://SERVICE.NAMESPACE.svc[...]:PORT[/prefix]);
# reach it from here through a port-forward to that Service.
read -r SVC SVC_NS SVC_PORT URL_PATH < <(python3 - "$URL" "$NS" <<'EOF'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
parts = (u.hostname or "").split(".")
ns = parts[1] if len(parts) > 1 and parts[1] != "svc" else sys.argv[2]
print(parts[0], ns, u.port or 80, u.path.rstrip("/") or "/")
EOF
)
LOCAL_PORT=18000
kubectl -n "$SVC_NS" port-forward "svc/$SVC" "$LOCAL_PORT:$SVC_PORT" >"$ARTIFACTS_DIR/port-forward.log" 2>&1 &
PF_PID=$!
BASE="http://127.0.0.1:$LOCAL_PORT${URL_PATH%/}"
curl -fsS --retry 30 --retry-delay 2 --retry-all-errors --max-time 10 "$BASE/v2/health/ready" >/dev/null
curl -fsS --max-time 10 "$BASE/v2/models/$NAME/ready" >/dev/null
METADATA=$(curl -fsS --max-time 10 "$BASE/v2/models/$NAME")
echo "$METADATA" >&2
INPUT_NAME=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["inputs"][0]["name"])' "$METADATA")
REQUEST=$(python3 - "$INPUT_NAME" <<'EOF'
import json, sys
texts = ["I was charged twice for my order, please refund one payment.",
         "The app crashes every time I open the settings page."]
print(json.dumps({"inputs": [{"name": sys.argv[1], "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}))
EOF
)
RESPONSE=$(curl -fsS --max-time 30 -H 'content-type: application/json' -d "$REQUEST" "$BASE/v2/models/$NAME/infer")
echo "$RESPONSE" >&2
python3 - "$RESPONSE" <<'EOF'
import json, sys
body = json.loads(sys.argv[1])
outputs = {o["name"]: o for o in body["outputs"]}
assert body.get("model_name") == "minilm-e2e", body.get("model_name")
assert len(outputs) >= 1, body
for o in outputs.values():
    assert o["shape"][0] == 2, o
print("v2 infer OK:", {name: o["data"][:4] for name, o in outputs.items()})
EOF
# A bad request is a 4xx, never a 5xx.
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' -d '{"inputs": 3}' \
  "$BASE/v2/models/$NAME/infer")
[[ "$code" =~ ^4 ]] || die "a malformed infer request got HTTP $code, want 4xx"
kill "$PF_PID" 2>/dev/null || true
PF_PID=""

# ----------------------------------------------------------------- 5. delete, nothing left
log "deleting the resources"
kubectl -n "$NS" delete -f "$MANIFESTS/modeldeployment.yaml" --wait --timeout=5m
kubectl -n "$NS" delete -f "$MANIFESTS/trainingjob.yaml" --wait --timeout=5m
wait_until_gone "RayJobs/RayServices" 300 kubectl -n "$NS" get rayjobs,rayservices,rayclusters -o name
for selector in "${CHILD_POD_SELECTORS[@]}"; do
  wait_until_gone "pods ($selector)" 300 kubectl -n "$NS" get pods -l "$selector" -o name
done
left=$(kubectl -n "$NS" get trainingjobs,modeldeployments -o name)
[[ -z "$left" ]] || die "resources still present: $left"

log "uninstalling rayrelay"
helm uninstall rayrelay --namespace "$SYSTEM_NS" --wait --timeout 3m
