#!/usr/bin/env bash
# sluice end-to-end on a real (kind) cluster. See kind-e2e/README.md.
#
# Needs docker, kind, kubectl, helm and curl. Steps:
#   0. the README's kind quick start: the kind-quickstart and kind-cleanup
#      blocks of README.md, run as they are, in a cluster of their own (the
#      answer must be the one the block shows);
#   1. create a kind cluster (Calico as CNI, so NetworkPolicy is enforced);
#   2. build the operator, web-ingress and exec-worker images (docker/Dockerfile)
#      and the custom worker image (examples/custom-worker/Dockerfile) with
#      --load --provenance=false; pull Redis for this machine's platform; load
#      each into the nodes from a `docker save` archive;
#   3. create $NAMESPACE and an unwatched namespace, helm install the chart
#      with those images watching $NAMESPACE (the chart is namespaced by
#      default), wait for the operator and run `helm test`; its ServiceAccount may get Secrets in
#      $NAMESPACE and nowhere else;
#   4. apply every example (hello, orders, orders-redis, websocket, graphql,
#      streaming, custom-worker), wait for Ready; hello applied in the
#      unwatched namespace is left alone (no status, no Deployment);
#   5. call each through a port-forward of its Service, checking exact answers
#      (the WebSocket one with kind-e2e/ws-call.py: answers in arrival order;
#      the streamed one with curl -N: every event, in order);
#   6. key rotation under traffic: a rotation of orders-redis's key ring is
#      started; requests run through the new key's introduction and the switch
#      of the signing key until every pod has seen it: none may fail;
#   7. two cpu workers through the StreamPipeline spec (groups[].replicas: the
#      operator owns the Deployment), then a Ready worker pod killed under
#      load: none may fail;
#   8. change a node's `with`: new pods roll out, the answers change;
#   9. NetworkPolicy: a pod of the pipeline reaches its Redis, a pod of another
#      app cannot;
#  10. autoscaling: a burst of slow requests scales group io up, and back down
#      to its minimum when the backlog is gone;
#  11. delete orders-redis: every owned object is gone, its Redis claim is kept;
#  12. helm upgrade with a changed CRD (the chart renders the CRD, so the
#      upgrade upgrades it) and helm test again: the new column is served, the
#      new operator takes over, the
#      pipelines' workloads are not touched;
#  13. clean-up: delete the pipelines, helm uninstall, delete the CRD; what is
#      left in the namespaces must be what is kept on purpose (the managed Redis
#      claims) and the namespaces' own defaults;
#  14. tear down — also on failure, after collecting logs and `kubectl describe`
#      into $ARTIFACTS.
#
# Environment:
#   CLUSTER_NAME     kind cluster name                   (default sluice-e2e)
#   KIND_NODE_IMAGE  node image (Kubernetes version)     (default kind's)
#   ARTIFACTS        where logs go on exit               (default kind-e2e/artifacts)
#   IMAGE_TAG        tag of the locally built images     (default e2e)
#   NAMESPACE        namespace of the pipelines          (default sluice-e2e)
#   KEEP_CLUSTER     1: do not delete the cluster at the end
#   SKIP_BUILD       1: the images are already built with IMAGE_TAG
#   SKIP_README      1: skip step 0 (the README's quick start)
#   README_TIMEOUT   bound of step 0, image builds included (default 60m)
#   CALICO_VERSION   Calico manifest version             (default v3.28.2)
#   TIMEOUT          bound of every wait, in seconds     (default 300s)
#
# Exit status: 0 all checks passed, 1 a check failed, 2 a required tool is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

CLUSTER_NAME="${CLUSTER_NAME:-sluice-e2e}"
ARTIFACTS="${ARTIFACTS:-$here/artifacts}"
IMAGE_TAG="${IMAGE_TAG:-e2e}"
NAMESPACE="${NAMESPACE:-sluice-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
SKIP_README="${SKIP_README:-0}"
README_TIMEOUT="${README_TIMEOUT:-60m}"
CALICO_VERSION="${CALICO_VERSION:-v3.28.2}"
TIMEOUT="${TIMEOUT:-300s}"
# The node image sets the Kubernetes version; empty means kind's default.
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"

OPERATOR_NS=sluice-system
RELEASE=sluice
# The chart's default ServiceAccount and Lease: <fullname>-operator, leaderElection.leaseName.
OPERATOR_SA=system:serviceaccount:$OPERATOR_NS:sluice-operator
OPERATOR_LEASE=sluice-operator-leader
CRD=streampipelines.sluice.dev
# Not in watchNamespaces: the operator must neither reconcile nor reach it.
UNWATCHED_NS="$NAMESPACE-unwatched"
# Local image names: sluice-<docker/Dockerfile target> (scripts/check-images).
IMAGE_TARGETS=(operator web-ingress exec-worker)
OPERATOR_IMAGE="sluice-operator:$IMAGE_TAG"
INGRESS_IMAGE="sluice-web-ingress:$IMAGE_TAG"
WORKER_IMAGE="sluice-exec-worker:$IMAGE_TAG"
# The tag pipeline.yaml names for the custom worker group.
CUSTOM_IMAGE=sluice-custom-worker:dev
# The chart's runtime.redisImage (scripts/check-images keeps them equal); also
# the image of the NetworkPolicy probe pods.
REDIS_IMAGE=redis:7.4-alpine
# The pipelines with managed Redis: deleting them keeps data-<name>-redis-0.
REDIS_PIPELINES=(orders-redis scoring)
# Operator settings of this run: a rotation's phases a minute or two apart
# (the kubelet shows a changed Secret within about a minute), a reconcile at
# least every 30 s (the operator does not watch Secrets), a fast autoscaler.
KEY_PROPAGATION=120
REQUEUE_INTERVAL=30

log() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'kind-e2e: FAILED: %s\n' "$*" >&2
  exit 1
}

if ! [[ "$TIMEOUT" =~ ^[0-9]+s$ ]]; then
  echo "kind-e2e: TIMEOUT is a number of seconds such as 300s, not '$TIMEOUT'" >&2
  exit 2
fi
timeout_s="${TIMEOUT%s}"

# --- tools ------------------------------------------------------------------

missing=()
for tool in docker kind kubectl helm curl python3 timeout; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "kind-e2e: missing required tool(s): ${missing[*]}" >&2
  echo "kind-e2e: this suite needs docker (with a running engine), kind, kubectl, helm, curl and python3" >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "kind-e2e: docker is installed but no container engine answers (docker info failed)" >&2
  exit 2
fi
# The platform of this machine's engine, which kind's nodes share.
platform="$(docker version --format '{{.Server.Os}}/{{.Server.Arch}}')"

# shellcheck source=scripts/lib/readme-block.sh
. "$root/scripts/lib/readme-block.sh"

# --- teardown (also on failure) ---------------------------------------------

work="$(mktemp -d)"
pf_pids=()
load_pid=""
load_dir=""
cluster_created=0
readme_cluster=""
readme_cluster_created=0
readme_pgid=""

collect() {
  mkdir -p "$ARTIFACTS"
  log "collecting logs into $ARTIFACTS"
  local ns pod
  for ns in "$OPERATOR_NS" "$NAMESPACE" "$UNWATCHED_NS"; do
    kubectl get all,networkpolicy,configmap,pvc,lease,events -n "$ns" -o wide >"$ARTIFACTS/$ns-get.txt" 2>&1 || true
    kubectl describe pods -n "$ns" >"$ARTIFACTS/$ns-describe-pods.txt" 2>&1 || true
    for pod in $(kubectl get pods -n "$ns" -o name 2>/dev/null); do
      kubectl logs -n "$ns" "$pod" --all-containers --prefix >"$ARTIFACTS/$ns-${pod#pod/}.log" 2>&1 || true
      kubectl logs -n "$ns" "$pod" --all-containers --prefix --previous \
        >"$ARTIFACTS/$ns-${pod#pod/}.previous.log" 2>/dev/null || rm -f "$ARTIFACTS/$ns-${pod#pod/}.previous.log"
    done
  done
  kubectl describe streampipelines -n "$NAMESPACE" >"$ARTIFACTS/streampipelines-describe.txt" 2>&1 || true
  kubectl get streampipelines -n "$NAMESPACE" -o yaml >"$ARTIFACTS/streampipelines.yaml" 2>&1 || true
  kubectl get pods -A -o wide >"$ARTIFACTS/all-pods.txt" 2>&1 || true
  kubectl get crd "$CRD" -o yaml >"$ARTIFACTS/crd.yaml" 2>&1 || true
  helm list -A >"$ARTIFACTS/helm-list.txt" 2>&1 || true
  kind export logs "$ARTIFACTS/kind" --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null; fi
  for pid in "${pf_pids[@]}"; do kill "$pid" 2>/dev/null; done
  # The README block's process group: whatever it left running (its port-forward).
  if [ -n "$readme_pgid" ]; then kill -- "-$readme_pgid" 2>/dev/null; fi
  if [ "$readme_cluster_created" = 1 ]; then
    mkdir -p "$ARTIFACTS"
    kind export logs "$ARTIFACTS/kind-readme" --name "$readme_cluster" >/dev/null 2>&1
    if [ "$KEEP_CLUSTER" = 1 ]; then
      log "KEEP_CLUSTER=1: leaving cluster $readme_cluster"
    else
      log "deleting kind cluster $readme_cluster (the README's)"
      kind delete cluster --name "$readme_cluster"
    fi
  fi
  if [ "$cluster_created" = 1 ]; then
    collect
    if [ "$KEEP_CLUSTER" = 1 ]; then
      log "KEEP_CLUSTER=1: leaving cluster $CLUSTER_NAME"
    else
      log "deleting kind cluster $CLUSTER_NAME"
      kind delete cluster --name "$CLUSTER_NAME"
    fi
  fi
  rm -rf "$work"
  if [ "$rc" = 0 ]; then log "kind-e2e: all checks passed"; else printf 'kind-e2e: exit %s (artifacts in %s)\n' "$rc" "$ARTIFACTS" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers ----------------------------------------------------------------

# poll SECONDS COMMAND...: runs COMMAND every 2 s until it succeeds (status 0)
# or SECONDS have passed (status 1).
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 2
  done
}

# wait_for SECONDS WHAT COMMAND...: poll, failing the suite after SECONDS.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  poll "$seconds" "$@" || die "timed out after ${seconds}s waiting for $what"
}

# port_forward SERVICE LOCAL_PORT: port-forward service/SERVICE:80 and wait
# until it answers; its pid is in $pf_last.
pf_last=""
port_forward() {
  local svc="$1" port="$2" i
  kubectl port-forward -n "$NAMESPACE" "service/$svc" "$port:80" >"$ARTIFACTS/port-forward-$svc-$port.log" 2>&1 &
  pf_last=$!
  pf_pids+=("$pf_last")
  for i in $(seq 1 60); do
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then return 0; fi
    sleep 1
  done
  die "port-forward to service/$svc never answered (try $i)"
}

# expect_answer PORT PATH BODY WANT: POST BODY, the answer must be exactly WANT.
expect_answer() {
  local port="$1" path="$2" body="$3" want="$4" got
  got="$(curl -sS --max-time 10 "http://127.0.0.1:$port$path" -d "$body")" ||
    die "POST $path $body: curl failed"
  [ "$got" = "$want" ] || die "POST $path $body: want $want, got $got"
  echo "ok  POST $path $body -> $got"
}

# expect_status PORT PATH BODY CODE: POST BODY, the HTTP status must be CODE.
expect_status() {
  local port="$1" path="$2" body="$3" want="$4" got
  got="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path" -d "$body")" || true
  [ "$got" = "$want" ] || die "POST $path $body: want status $want, got $got"
  echo "ok  POST $path $body -> $got"
}

wait_ready() {
  local name="$1"
  kubectl wait -n "$NAMESPACE" --for=condition=Ready "streampipeline/$name" --timeout="$TIMEOUT" ||
    die "streampipeline/$name never became Ready"
}

# ready_pods_of PIPELINE GROUP: names of the group's pods whose Ready condition
# is True, leaving out pods being deleted (a terminating pod can still be Ready).
# shellcheck disable=SC2016 # a Go template, not shell
ready_template='{{range .items}}{{$name := .metadata.name}}{{if not .metadata.deletionTimestamp}}{{range .status.conditions}}{{if and (eq .type "Ready") (eq .status "True")}}{{$name}}{{"\n"}}{{end}}{{end}}{{end}}{{end}}'
ready_pods_of() {
  kubectl get pods -n "$NAMESPACE" -l "sluice.dev/pipeline=$1,sluice.dev/group=$2" -o go-template="$ready_template"
}

# ready_count_is PIPELINE GROUP N: exactly N pods of the group are Ready and not terminating.
ready_count_is() {
  [ "$(ready_pods_of "$1" "$2" | grep -c .)" = "$3" ]
}

# deployment_replicas_is NAME N: the Deployment's spec.replicas is N.
deployment_replicas_is() {
  [ "$(kubectl get deployment -n "$NAMESPACE" "$1" -o jsonpath='{.spec.replicas}')" = "$2" ]
}

# load_image IMAGE: into every node of the cluster, from a `docker save` archive
# of this machine's platform only. (`kind load docker-image` fails on an image
# whose index names content of other platforms or attestations that the
# engine's containerd image store does not hold.)
load_image() {
  local image="$1" archive
  archive="$work/image-$(printf '%s' "$image" | tr '/:' '__').tar"
  log "kind load image-archive $image ($platform)"
  # Engines before Docker 28 have no `save --platform`: their image store holds one platform anyway.
  docker save --platform "$platform" -o "$archive" "$image" 2>/dev/null ||
    docker save -o "$archive" "$image" ||
    die "docker save $image failed (is it built or pulled?)"
  kind load image-archive "$archive" --name "$CLUSTER_NAME" || die "kind load image-archive $image failed"
  rm -f "$archive"
}

# start_load NAME PORT: POSTs orders L1, L2, ... to orders-redis through
# 127.0.0.1:PORT one after the other, in the background, until stop_load (at
# most 100000). Exact answers are counted in $load_dir/ok, others in $load_dir/failed.
start_load() {
  load_dir="$ARTIFACTS/load-$1"
  local port="$2"
  rm -rf "$load_dir"
  mkdir -p "$load_dir"
  : >"$load_dir/ok"
  : >"$load_dir/failed"
  (
    for i in $(seq 1 100000); do
      [ ! -e "$load_dir/stop" ] || break
      want="{\"order\":\"L$i\",\"price\":5,\"status\":\"accepted\",\"summary\":\"1 item(s) in the standard lane\"}"
      got="$(curl -sS --max-time 15 "http://127.0.0.1:$port/v1/orders" -d "{\"id\":\"L$i\",\"type\":\"bulk\",\"items\":1}" 2>&1)" || true
      if [ "$got" = "$want" ]; then echo "$i" >>"$load_dir/ok"; else echo "$i $got" >>"$load_dir/failed"; fi
      # At most ~10 requests a second: enough to cross every step, few enough
      # connections for one kubectl port-forward.
      sleep 0.1
    done
  ) &
  load_pid=$!
}

# load_answered N: at least N requests of the running load were answered.
load_answered() {
  [ "$(wc -l <"$load_dir/ok")" -ge "$1" ]
}

# stop_load WHAT: ends the load after its request in flight (at most 15 s); any
# request without its exact answer fails the suite.
stop_load() {
  local what="$1" ok failed
  touch "$load_dir/stop"
  wait "$load_pid" || true
  load_pid=""
  ok="$(wc -l <"$load_dir/ok")"
  failed="$(wc -l <"$load_dir/failed")"
  if [ "$failed" -gt 0 ]; then
    head -n 20 "$load_dir/failed" >&2
    die "$failed of $((ok + failed)) requests failed $what"
  fi
  [ "$ok" -gt 0 ] || die "no request was answered $what"
  echo "ok  $ok/$ok requests answered $what"
}

# --- 0. the README's kind quick start ---------------------------------------

if [ "$SKIP_README" != 1 ]; then
  quickstart="$(readme_block README.md kind-quickstart)" ||
    die "README.md has no kind-quickstart block (<!-- kind-quickstart:begin --> ... <!-- kind-quickstart:end -->)"
  readme_cleanup="$(readme_block README.md kind-cleanup)" ||
    die "README.md has no kind-cleanup block (<!-- kind-cleanup:begin --> ... <!-- kind-cleanup:end -->)"
  readme_cluster="$(sed -n 's/^kind create cluster --name \([a-z0-9][a-z0-9-]*\).*/\1/p' <<<"$quickstart" | head -n 1)"
  [ -n "$readme_cluster" ] || die "README.md kind-quickstart: no 'kind create cluster --name NAME' line"
  [ "$readme_cluster" != "$CLUSTER_NAME" ] || die "CLUSTER_NAME must differ from the README's cluster name ($readme_cluster)"
  if kind get clusters 2>/dev/null | grep -qx "$readme_cluster"; then
    die "a kind cluster named $readme_cluster (the README's) already exists; delete it or set SKIP_README=1"
  fi
  mapfile -t readme_answers < <(sed -n 's/^# \({.*}\)$/\1/p' <<<"$quickstart")
  [ "${#readme_answers[@]}" -gt 0 ] || die "README.md kind-quickstart: no '# {...}' answer line to check"

  mkdir -p "$ARTIFACTS"
  log "README quick start (README.md, kind-quickstart block, as it is; bounded by $README_TIMEOUT)"
  readme_cluster_created=1
  rc=0
  # timeout runs the block in a process group of its own, ended afterwards with
  # whatever the block left running. Its output goes to a file for the check.
  timeout "$README_TIMEOUT" bash -euo pipefail -c "$quickstart" >"$ARTIFACTS/readme-quickstart.out" &
  readme_pgid=$!
  wait "$readme_pgid" || rc=$?
  kill -- "-$readme_pgid" 2>/dev/null || true
  readme_pgid=""
  cat "$ARTIFACTS/readme-quickstart.out"
  [ "$rc" != 124 ] || die "the README's kind-quickstart block did not finish within $README_TIMEOUT"
  [ "$rc" = 0 ] || die "the README's kind-quickstart block failed (exit $rc)"
  for want in "${readme_answers[@]}"; do
    grep -qxF -- "$want" "$ARTIFACTS/readme-quickstart.out" ||
      die "the README's kind-quickstart block did not print the answer it shows: $want"
    echo "ok  the README's quick start answered $want"
  done

  log "README clean-up (README.md, kind-cleanup block, as it is)"
  timeout "$timeout_s" bash -euo pipefail -c "$readme_cleanup" || die "the README's kind-cleanup block failed"
  if kind get clusters 2>/dev/null | grep -qx "$readme_cluster"; then
    die "the README's kind-cleanup block left cluster $readme_cluster"
  fi
  readme_cluster_created=0
  echo "ok  the README's cluster $readme_cluster is gone"
fi

# --- 1. cluster -------------------------------------------------------------

mkdir -p "$ARTIFACTS"
log "creating kind cluster $CLUSTER_NAME (default CNI disabled; Calico enforces NetworkPolicy)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  die "a kind cluster named $CLUSTER_NAME already exists; delete it or set CLUSTER_NAME"
fi
cluster_created=1
kind create cluster --name "$CLUSTER_NAME" --config "$here/kind-config.yaml" --wait 0s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null
kubectl version

log "installing Calico $CALICO_VERSION"
timeout 120 kubectl apply -f "https://raw.githubusercontent.com/projectcalico/calico/$CALICO_VERSION/manifests/calico.yaml" >/dev/null ||
  die "could not apply the Calico $CALICO_VERSION manifest"
kubectl rollout status -n kube-system daemonset/calico-node --timeout="$TIMEOUT"
kubectl rollout status -n kube-system deployment/calico-kube-controllers --timeout="$TIMEOUT"
kubectl wait --for=condition=Ready nodes --all --timeout="$TIMEOUT"

# --- 2. images --------------------------------------------------------------

# --load: the image goes to the engine's image store whatever the builder;
# --provenance=false: no attestation manifest beside the image.
if [ "$SKIP_BUILD" != 1 ]; then
  for target in "${IMAGE_TARGETS[@]}"; do
    log "building sluice-$target:$IMAGE_TAG"
    docker build --load --provenance=false -f docker/Dockerfile --target "$target" -t "sluice-$target:$IMAGE_TAG" .
  done
  log "building $CUSTOM_IMAGE"
  docker build --load --provenance=false -f examples/custom-worker/Dockerfile -t "$CUSTOM_IMAGE" .
fi
# Redis and the probe pods use $REDIS_IMAGE: pulled once, for this platform
# only, and loaded, so the nodes never pull it.
log "pulling $REDIS_IMAGE ($platform)"
timeout "$timeout_s" docker pull --platform "$platform" "$REDIS_IMAGE" >/dev/null || die "docker pull $REDIS_IMAGE failed"
for image in "$OPERATOR_IMAGE" "$INGRESS_IMAGE" "$WORKER_IMAGE" "$CUSTOM_IMAGE" "$REDIS_IMAGE"; do
  load_image "$image"
done

# --- 3. chart ---------------------------------------------------------------

# watchNamespaces must exist before the install: the chart puts a Role there.
kubectl create namespace "$NAMESPACE"
kubectl create namespace "$UNWATCHED_NS"
log "helm install $RELEASE (watching $OPERATOR_NS and $NAMESPACE)"
helm install "$RELEASE" helm/sluice --namespace "$OPERATOR_NS" --create-namespace \
  --set "watchNamespaces={$NAMESPACE}" \
  --set image.repository=sluice-operator --set-string image.tag="$IMAGE_TAG" \
  --set image.pullPolicy=Never \
  --set runtime.ingressImage.repository=sluice-web-ingress --set-string runtime.ingressImage.tag="$IMAGE_TAG" \
  --set runtime.workerImage.repository=sluice-exec-worker --set-string runtime.workerImage.tag="$IMAGE_TAG" \
  --set runtime.imagePullPolicy=IfNotPresent \
  --set logFormat=text --set autoscaleInterval=3s \
  --set keyPropagation="${KEY_PROPAGATION}s" --set requeueInterval="${REQUEUE_INTERVAL}s"
kubectl rollout status -n "$OPERATOR_NS" deployment/sluice-operator --timeout="$TIMEOUT"
# The chart's own test: the operator Available, the StreamPipeline API served.
helm test "$RELEASE" --namespace "$OPERATOR_NS" --timeout "$TIMEOUT" ||
  die "helm test $RELEASE failed"

log "the operator's Secret access ends at its watched namespaces"
# can-i exits 0 for yes, 1 for no.
for ns in "$NAMESPACE" "$OPERATOR_NS"; do
  kubectl auth can-i get secrets -n "$ns" --as="$OPERATOR_SA" >/dev/null ||
    die "the operator may not get Secrets in watched namespace $ns"
done
if kubectl auth can-i get secrets -n "$UNWATCHED_NS" --as="$OPERATOR_SA" >/dev/null 2>&1; then
  die "the operator may get Secrets in unwatched namespace $UNWATCHED_NS"
fi
if kubectl auth can-i get secrets --all-namespaces --as="$OPERATOR_SA" >/dev/null 2>&1; then
  die "the operator may get Secrets in every namespace"
fi
echo "ok  Secrets: get in $OPERATOR_NS and $NAMESPACE only"

# --- 4. pipelines -----------------------------------------------------------

log "applying the examples"
kubectl apply -n "$NAMESPACE" -f examples/hello.yaml
kubectl apply -n "$NAMESPACE" -f examples/orders.yaml
kubectl apply -n "$NAMESPACE" -f examples/orders-redis.yaml
kubectl apply -n "$NAMESPACE" -f examples/custom-worker/pipeline.yaml
kubectl apply -n "$NAMESPACE" -f examples/websocket.yaml
kubectl apply -n "$NAMESPACE" -f examples/graphql.yaml
kubectl apply -n "$NAMESPACE" -f examples/streaming.yaml
kubectl apply -n "$UNWATCHED_NS" -f examples/hello.yaml
for p in hello orders orders-redis scoring websocket graphql streaming; do wait_ready "$p"; done
# By now the operator has long had the chance to act on it, were it watched.
kubectl get streampipeline -n "$UNWATCHED_NS" hello >/dev/null
[ -z "$(kubectl get streampipeline -n "$UNWATCHED_NS" hello -o jsonpath='{.status}')" ] ||
  die "the operator wrote the status of a pipeline in unwatched namespace $UNWATCHED_NS"
[ -z "$(kubectl get deployments -n "$UNWATCHED_NS" -o name)" ] ||
  die "the operator created Deployments in unwatched namespace $UNWATCHED_NS"
echo "ok  hello in $UNWATCHED_NS is left alone"

# --- 5. answers -------------------------------------------------------------

log "answers through the ingress Services"
port_forward hello 18081
port_forward orders-redis 18082
orders_redis_pf="$pf_last"
port_forward scoring 18083
port_forward orders 18086
expect_answer 18081 /v1/hello '{"name":"world"}' '{"greeting":"hello, world"}'
for port in 18086 18082; do
  expect_answer "$port" /v1/orders '{"id":"A1","type":"priority","items":3}' \
    '{"order":"A1","price":0,"status":"accepted","summary":"3 item(s) in the rush lane"}'
  expect_answer "$port" /v1/orders '{"id":"B2","type":"bulk","items":2}' \
    '{"order":"B2","price":5,"status":"accepted","summary":"2 item(s) in the standard lane"}'
done
expect_answer 18083 /v1/score '{"id":"A1","items":3,"urgent":true}' '{"id":"A1","lane":"fast-track","score":16}'
expect_answer 18083 /v1/score '{"id":"B2","items":2,"urgent":false}' '{"id":"B2","lane":"standard","score":4}'
expect_status 18083 /v1/score '{"id":"C3","items":"many","urgent":true}' 422
port_forward graphql 18091
expect_answer 18091 /v1/graphql '{"query":"{ greet(name: \"kind\") { greeting } }"}' \
  '{"data":{"greet":{"greeting":"hello, kind"}}}'
expect_answer 18091 /v1/graphql '{"query":"mutation { submit(id: \"K1\", items: 2) { id items accepted } }"}' \
  '{"data":{"submit":{"id":"K1","items":2,"accepted":true}}}'
port_forward websocket 18092
# Finished in reverse order (600 ms, 300 ms, none), answered in arrival order.
got="$(python3 "$here/ws-call.py" ws://127.0.0.1:18092/v1/ordered \
  '{"id":"a","input":{"speed":"slow"}}' '{"id":"b","input":{"speed":"medium"}}' \
  '{"id":"c","input":{"speed":"fast"}}')" || die "WebSocket /v1/ordered: no answers"
want='{"id":"a","result":{"done":true,"speed":"slow"}}
{"id":"b","result":{"done":true,"speed":"medium"}}
{"id":"c","result":{"done":true,"speed":"fast"}}'
[ "$got" = "$want" ] || die "WebSocket /v1/ordered: want $want, got $got"
echo "ok  WebSocket /v1/ordered answers in arrival order"
port_forward streaming 18093
# Server-Sent Events: each word its own chunk, then the result; the start
# event's id is random, so only its name is compared.
got="$(curl -sN --max-time 20 -H 'content-type: application/json' \
  -d '{"words":["a","b"]}' http://127.0.0.1:18093/v1/words |
  grep -v '^data: {"events"' | grep -v '^$')" || die "SSE /v1/words: no stream"
want='event: start
id: 1.1
event: chunk
data: "a"
id: 1.2
event: chunk
data: "b"
event: result
data: {"chunks":2}'
[ "$got" = "$want" ] || die "SSE /v1/words: want $want, got $got"
echo "ok  SSE /v1/words streams each chunk, then the result"

# --- 6. key rotation under traffic ------------------------------------------

keys=orders-redis-ipc-keys
key_annotation() {
  kubectl get secret -n "$NAMESPACE" "$keys" -o jsonpath="{.metadata.annotations.sluice\.dev/rotation-$1}"
}
current_kid() {
  kubectl get secret -n "$NAMESPACE" "$keys" -o jsonpath='{.data.current}' | base64 -d
}
# phase_is PHASE...: the ring's rotation phase is one of PHASE.
phase_is() {
  local phase one
  phase="$(key_annotation phase)"
  for one in "$@"; do [ "$phase" != "$one" ] || return 0; done
  return 1
}

log "key rotation of orders-redis under a load of requests"
old_kid="$(current_kid)"
[ -n "$old_kid" ] || die "$keys names no current key"
start_load rotation 18082
wait_for 60 "the first answers of the load" load_answered 20
# Dating the last rotation back makes the next reconcile start one (docs/key-rotation.md).
kubectl annotate secret -n "$NAMESPACE" "$keys" --overwrite sluice.dev/rotation-updated=2000-01-01T00:00:00Z >/dev/null
wait_for $((REQUEUE_INTERVAL + 60)) "the rotation to start (phase added)" phase_is added retiring
new_kid="$(key_annotation new-kid)"
if [ -z "$new_kid" ] || [ "$new_kid" = "$old_kid" ]; then
  die "the rotation started without a new kid (new-kid '$new_kid', old $old_kid)"
fi
echo "ok  $new_kid added beside $old_kid"
wait_for $((KEY_PROPAGATION + REQUEUE_INTERVAL + 60)) "the signing key to switch (phase retiring)" phase_is retiring
[ "$(current_kid)" = "$new_kid" ] || die "phase retiring, but current is $(current_kid), not $new_kid"
ring="$(kubectl get secret -n "$NAMESPACE" "$keys" -o jsonpath='{.data}')"
[[ "$ring" == *"\"$old_kid\""* ]] || die "the old key $old_kid left the ring when the new one became current"
echo "ok  $new_kid signs, $old_kid still verifies"
# Every pod sees the switch within the propagation delay: the load runs that long.
sleep "$KEY_PROPAGATION"
stop_load "during the rotation $old_kid -> $new_kid"

# --- 7. kill a worker during load -------------------------------------------

log "two cpu workers for orders-redis, through the pipeline's spec"
# The operator owns the Deployment: a `kubectl scale` would be undone at once.
kubectl patch streampipeline -n "$NAMESPACE" orders-redis --type=json -p '[
  {"op": "test", "path": "/spec/groups/1/name", "value": "cpu"},
  {"op": "add", "path": "/spec/groups/1/replicas", "value": 2}
]' >/dev/null
wait_for "$timeout_s" "deployment/orders-redis-cpu to ask for 2 replicas" deployment_replicas_is orders-redis-cpu 2
kubectl rollout status -n "$NAMESPACE" deployment/orders-redis-cpu --timeout="$TIMEOUT"
wait_ready orders-redis
wait_for "$timeout_s" "2 Ready cpu worker pods" ready_count_is orders-redis cpu 2

log "killing a Ready cpu worker pod of orders-redis during a load of requests"
start_load kill 18082
wait_for 60 "the first answers of the load" load_answered 20
victim="$(ready_pods_of orders-redis cpu | head -n 1)"
[ -n "$victim" ] || die "no Ready cpu worker pod to kill"
echo "deleting pod $victim (grace period 0)"
kubectl delete pod -n "$NAMESPACE" "$victim" --grace-period=0 --force --wait=false
wait_for "$timeout_s" "a replacement of $victim (2 Ready cpu worker pods)" ready_count_is orders-redis cpu 2
# Captured first: `grep -q` ending the pipe early must not fail it.
ready_now="$(ready_pods_of orders-redis cpu)"
if grep -qx "$victim" <<<"$ready_now"; then die "$victim is still counted Ready"; fi
# A little more load on the replacement, then the count.
answered="$(wc -l <"$load_dir/ok")"
wait_for 60 "answers after the replacement" load_answered $((answered + 20))
stop_load "while $victim was killed and replaced"

# --- 8. spec change and rollout ---------------------------------------------

log "changing a node's with (summarize status accepted -> queued) and checking the rollout"
old_io="$(ready_pods_of orders-redis io | sort)"
config_hash() {
  kubectl get deployment -n "$NAMESPACE" orders-redis-io -o jsonpath='{.spec.template.metadata.annotations.sluice\.dev/config-hash}'
}
hash_changed() { [ "$(config_hash)" != "$old_hash" ]; }
old_hash="$(config_hash)"
kubectl patch streampipeline -n "$NAMESPACE" orders-redis --type=json -p '[
  {"op": "test", "path": "/spec/nodes/4/name", "value": "summarize"},
  {"op": "replace", "path": "/spec/nodes/4/with/template/status", "value": "queued"}
]'
wait_for 120 "the config hash of orders-redis-io to change after the spec change" hash_changed
new_hash="$(config_hash)"
for d in orders-redis-web orders-redis-cpu orders-redis-io; do
  kubectl rollout status -n "$NAMESPACE" "deployment/$d" --timeout="$TIMEOUT"
done
wait_ready orders-redis
new_io="$(ready_pods_of orders-redis io | sort)"
if [ -n "$(comm -12 <(echo "$old_io") <(echo "$new_io"))" ]; then
  die "io worker pods were not replaced: before [$old_io], after [$new_io]"
fi
echo "ok  config hash $old_hash -> $new_hash, io pods replaced"
# The ingress pod was replaced too: forward again.
kill "$orders_redis_pf" 2>/dev/null || true
port_forward orders-redis 18084
expect_answer 18084 /v1/orders '{"id":"A1","type":"priority","items":3}' \
  '{"order":"A1","price":0,"status":"queued","summary":"3 item(s) in the rush lane"}'

# --- 9. NetworkPolicy -------------------------------------------------------

log "NetworkPolicy: a pod of another app cannot reach orders-redis-redis"
kubectl get networkpolicy -n "$NAMESPACE" orders-redis-redis >/dev/null || die "no NetworkPolicy orders-redis-redis"
# Positive control first: without the policy's protection the same probe would
# connect (proves a timeout below is the policy, not DNS or an absent Service).
# We probe the port with the Redis password unknown: an answer (even NOAUTH)
# means the connection was allowed. Managed Redis speaks only TLS; the probe
# skips verifying the certificate, it only asks whether Redis answers.
probe() {
  local name="$1"
  shift
  timeout 180 kubectl run -n "$NAMESPACE" "$name" --rm -i --restart=Never --image="$REDIS_IMAGE" \
    --image-pull-policy=Never --pod-running-timeout=2m "$@" \
    --command -- sh -c 'timeout 5 redis-cli --tls --insecure -h orders-redis-redis -p 6379 ping' 2>&1
}
if out="$(probe np-allowed --labels=sluice.dev/pipeline=orders-redis)"; then
  echo "ok  a pod labelled sluice.dev/pipeline=orders-redis connects: $(echo "$out" | head -n 1)"
else
  case "$out" in
    *NOAUTH* | *PONG*) echo "ok  a pod labelled sluice.dev/pipeline=orders-redis connects" ;;
    *) die "control probe (labelled as the pipeline) could not reach Redis: $out" ;;
  esac
fi
if out="$(probe np-denied --labels=app=intruder)"; then
  die "a pod of another app reached Redis: $out"
fi
case "$out" in
  *NOAUTH* | *PONG*) die "a pod of another app reached Redis: $out" ;;
esac
echo "ok  a pod of another app cannot reach Redis ($(echo "$out" | tail -n 1))"

# --- 10. autoscaling ---------------------------------------------------------

log "autoscaling: a backlog on group io scales it up, and back down when it is gone"
# One envelope at a time per io worker, each taking 2 s: a burst of requests
# queues up on io's stream and the builtin autoscaler (every 3 s here) must
# add replicas; with a 30 s window it goes back to 1 once the burst is served.
# The answers change; the pipeline is deleted next anyway.
kubectl patch streampipeline -n "$NAMESPACE" orders-redis --type=json -p '[
  {"op": "test", "path": "/spec/groups/2/name", "value": "io"},
  {"op": "replace", "path": "/spec/groups/2", "value": {"name": "io", "role": "worker", "concurrency": 1,
    "autoscale": {"minReplicas": 1, "maxReplicas": 4, "targetBacklogPerReplica": 5, "scaleDownStabilization": "30s"}}},
  {"op": "test", "path": "/spec/nodes/4/name", "value": "summarize"},
  {"op": "replace", "path": "/spec/nodes/4/uses", "value": "builtin/delay"},
  {"op": "replace", "path": "/spec/nodes/4/with", "value": {"duration": "2s"}},
  {"op": "replace", "path": "/spec/interfaces/0/timeout", "value": "30s"}
]' >/dev/null
wait_ready orders-redis
kubectl rollout status -n "$NAMESPACE" deployment/orders-redis-web --timeout="$TIMEOUT"
# The ingress pod was replaced (the interface timeout changed): forward again.
port_forward orders-redis 18085
burst_pids=()
for i in $(seq 1 40); do
  curl -s -o /dev/null -m 40 -X POST "http://127.0.0.1:18085/v1/orders" \
    -d "{\"id\":\"S$i\",\"type\":\"standard\",\"items\":1}" &
  burst_pids+=("$!")
done
io_scaled_up() {
  local replicas
  replicas="$(kubectl get deployment -n "$NAMESPACE" orders-redis-io -o jsonpath='{.spec.replicas}')"
  [ "${replicas:-1}" -gt 1 ] && scaled="$replicas"
}
scaled=""
wait_for 90 "orders-redis-io to scale up under a backlog" io_scaled_up
for pid in "${burst_pids[@]}"; do wait "$pid" || true; done
reason="$(kubectl get streampipeline -n "$NAMESPACE" orders-redis \
  -o jsonpath='{.status.groups[?(@.name=="io")].lastScale.reason}')"
[[ $reason == *backlog* ]] ||
  die "no lastScale with a backlog reason in the status of orders-redis (got: $reason)"
echo "ok  io scaled up to $scaled replicas under a backlog"
wait_for "$timeout_s" "orders-redis-io to scale back down to 1 replica" deployment_replicas_is orders-redis-io 1
echo "ok  io scaled back down to 1 replica"

# --- 11. delete --------------------------------------------------------------

log "deleting orders-redis: every owned object must go, its Redis claim stays"
uid="$(kubectl get streampipeline -n "$NAMESPACE" orders-redis -o jsonpath='{.metadata.uid}')"
kubectl delete streampipeline -n "$NAMESPACE" orders-redis --wait=true --timeout="$TIMEOUT"
# Claims are not listed: the managed Redis claim outlives its pipeline on purpose.
kinds=configmaps,secrets,services,statefulsets,deployments,poddisruptionbudgets,horizontalpodautoscalers,ingresses,networkpolicies,pods
left=""
owned=""
for _ in $(seq 1 $((timeout_s / 2))); do
  left="$(kubectl get "$kinds" -n "$NAMESPACE" -l sluice.dev/pipeline=orders-redis -o name 2>/dev/null)"
  # The listing first, failing loudly: a failed get must not read as "none".
  listing="$(kubectl get "$kinds,persistentvolumeclaims" -n "$NAMESPACE" -o json)" ||
    die "cannot list the namespace $NAMESPACE"
  owned="$(grep -c "\"uid\": \"$uid\"" <<<"$listing" || true)"
  [ -z "$left" ] && [ "$owned" = 0 ] && break
  sleep 2
done
[ -z "$left" ] || die "objects of orders-redis left after delete: $left"
[ "$owned" = 0 ] || die "$owned object(s) still owned by the deleted pipeline (uid $uid)"
kubectl get pvc -n "$NAMESPACE" data-orders-redis-redis-0 >/dev/null ||
  die "the managed Redis claim data-orders-redis-redis-0 was not kept"
echo "ok  nothing of orders-redis is left but its Redis claim data-orders-redis-redis-0"
# The other pipelines are unaffected.
expect_answer 18081 /v1/hello '{"name":"again"}' '{"greeting":"hello, again"}'

# --- 12. helm upgrade with a changed CRD ------------------------------------

log "helm upgrade with a changed CRD (the chart renders it: the upgrade upgrades it)"
# The next chart: this one with a printer column added to the CRD.
next_chart="$work/sluice"
cp -R helm/sluice "$next_chart"
awk '{ print }
  /^  - additionalPrinterColumns:$/ && !added {
    print "    - jsonPath: .metadata.generation"
    print "      name: Generation"
    print "      type: integer"
    added = 1
  }' helm/sluice/files/streampipeline.yaml >"$next_chart/files/streampipeline.yaml"
grep -q '^      name: Generation$' "$next_chart/files/streampipeline.yaml" ||
  die "could not add a printer column to the CRD of the next chart"
hello_generation="$(kubectl get deployment -n "$NAMESPACE" hello-web -o jsonpath='{.metadata.generation}')"
old_operator_pods="$(kubectl get pods -n "$OPERATOR_NS" -l app.kubernetes.io/name=sluice-operator -o name)"
helm upgrade "$RELEASE" "$next_chart" --namespace "$OPERATOR_NS" --reuse-values --set logLevel=debug
kubectl wait --for=condition=Established "crd/$CRD" --timeout="$TIMEOUT"
kubectl rollout status -n "$OPERATOR_NS" deployment/sluice-operator --timeout="$TIMEOUT"
# The chart's own test: the operator Available, the StreamPipeline API served.
helm test "$RELEASE" --namespace "$OPERATOR_NS" --timeout "$TIMEOUT" ||
  die "helm test $RELEASE failed"
[ "$(kubectl get deployment -n "$OPERATOR_NS" sluice-operator -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="RUST_LOG")].value}')" = debug ] ||
  die "helm upgrade did not reach the operator (RUST_LOG is not debug)"
operator_pod_gone() { ! kubectl get -n "$OPERATOR_NS" "$1" -o name >/dev/null 2>&1; }
for pod in $old_operator_pods; do
  wait_for "$timeout_s" "the old operator $pod to go" operator_pod_gone "$pod"
done
listing="$(kubectl get streampipelines -n "$NAMESPACE")"
echo "$listing"
[[ "${listing%%$'\n'*}" == *" GENERATION"* ]] || die "the upgraded CRD's Generation column is not served"
echo "ok  the upgraded CRD is served (Generation column)"
for p in hello orders scoring websocket graphql streaming; do wait_ready "$p"; done
[ "$(kubectl get deployment -n "$NAMESPACE" hello-web -o jsonpath='{.metadata.generation}')" = "$hello_generation" ] ||
  die "the operator upgrade changed deployment/hello-web"
expect_answer 18081 /v1/hello '{"name":"upgraded"}' '{"greeting":"hello, upgraded"}'
echo "ok  the new operator took the pipelines over without touching their workloads"

# --- 13. clean-up -----------------------------------------------------------

log "clean-up: delete the pipelines, helm uninstall, delete the CRD"
for ns in "$NAMESPACE" "$UNWATCHED_NS"; do
  kubectl delete streampipelines --all -n "$ns" --wait=true --timeout="$TIMEOUT"
done
no_pipeline_pods() { [ -z "$(kubectl get pods -n "$NAMESPACE" -l sluice.dev/pipeline -o name)" ]; }
wait_for "$timeout_s" "the pipelines' pods to go" no_pipeline_pods
helm uninstall "$RELEASE" --namespace "$OPERATOR_NS" --wait --timeout "$TIMEOUT"
kubectl delete crd "$CRD" --wait=true --timeout="$TIMEOUT"
[ -z "$(kubectl get clusterroles,clusterrolebindings -l "app.kubernetes.io/instance=$RELEASE" -o name)" ] ||
  die "cluster-scoped objects of the release left after helm uninstall"

# leftovers NAMESPACE: every object left in NAMESPACE, as kind/name (events,
# which expire by themselves, left out).
leftovers() {
  local resource
  for resource in $(kubectl api-resources --verbs=list --namespaced -o name | grep -v '^events'); do
    kubectl get "$resource" -n "$1" -o name 2>/dev/null || true
  done | sort
}
# only_kept NAMESPACE EXPECTED...: what is left is exactly EXPECTED.
only_kept() {
  local ns="$1"
  shift
  [ "$(leftovers "$ns")" = "$(printf '%s\n' "$@" | sort)" ]
}
defaults=(configmap/kube-root-ca.crt serviceaccount/default)
kept=()
for p in "${REDIS_PIPELINES[@]}"; do kept+=("persistentvolumeclaim/data-$p-redis-0"); done
# The Lease is the operator's, not the release's: Helm did not create it and
# the operator may not delete it.
operator_kept=("lease.coordination.k8s.io/$OPERATOR_LEASE")
for ns in "$NAMESPACE" "$UNWATCHED_NS" "$OPERATOR_NS"; do
  case "$ns" in
    "$NAMESPACE") expected=("${defaults[@]}" "${kept[@]}") ;;
    "$OPERATOR_NS") expected=("${defaults[@]}" "${operator_kept[@]}") ;;
    *) expected=("${defaults[@]}") ;;
  esac
  if ! poll "$timeout_s" only_kept "$ns" "${expected[@]}"; then
    echo "left in $ns:" >&2
    leftovers "$ns" | sed 's/^/  /' >&2
    die "namespace $ns holds other objects than ${expected[*]} (after ${timeout_s}s)"
  fi
  echo "ok  left in $ns: ${expected[*]}"
done

log "done"
