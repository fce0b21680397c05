#!/usr/bin/env bash
# sluice end-to-end on a real (kind) cluster. See kind-e2e/README.md.
#
# Needs docker, kind, kubectl and helm. Steps:
#   1. create a kind cluster (Calico as CNI, so NetworkPolicy is enforced);
#   2. build the operator, web-ingress and exec-worker images (docker/Dockerfile)
#      and the custom worker image (examples/custom-worker/Dockerfile), load them;
#   3. create $NAMESPACE and an unwatched namespace, helm install the chart
#      with those images watching $NAMESPACE (the chart is namespaced by
#      default), wait for the operator; its ServiceAccount may get Secrets in
#      $NAMESPACE and nowhere else;
#   4. apply examples/hello.yaml, examples/orders-redis.yaml,
#      examples/websocket.yaml, examples/graphql.yaml, examples/streaming.yaml
#      and examples/custom-worker/pipeline.yaml, wait for Ready; hello applied in
#      the unwatched namespace is left alone (no status, no Deployment);
#   5. call each through a port-forward of its Service, checking exact answers
#      (the WebSocket one with kind-e2e/ws-call.py: answers in arrival order;
#      the streamed one with curl -N: every event, in order);
#   6. kill a worker pod during a load of requests: none may fail;
#   7. change a node's `with`: new pods roll out, the answers change;
#   8. NetworkPolicy: a pod of another app cannot reach the pipeline's Redis;
#      then a burst of slow requests: the builtin autoscaler scales a group up;
#   9. delete the pipeline: every owned object is gone;
#  10. tear down — also on failure, after collecting logs and `kubectl describe`
#      into $ARTIFACTS.
#
# Environment:
#   CLUSTER_NAME   kind cluster name                 (default sluice-e2e)
#   ARTIFACTS      where logs go on exit             (default kind-e2e/artifacts)
#   IMAGE_TAG      tag of the locally built images   (default e2e)
#   NAMESPACE      namespace of the pipelines        (default sluice-e2e)
#   KEEP_CLUSTER   1: do not delete the cluster at the end
#   SKIP_BUILD     1: the images are already built with IMAGE_TAG
#   CALICO_VERSION Calico manifest version           (default v3.28.2)
#   TIMEOUT        kubectl wait timeout              (default 300s)
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
CALICO_VERSION="${CALICO_VERSION:-v3.28.2}"
TIMEOUT="${TIMEOUT:-300s}"
# The node image sets the Kubernetes version; empty means kind's default.
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"

OPERATOR_NS=sluice-system
RELEASE=sluice
# The chart's default ServiceAccount: <fullname>-operator.
OPERATOR_SA=system:serviceaccount:$OPERATOR_NS:sluice-operator
# Not in watchNamespaces: the operator must neither reconcile nor reach it.
UNWATCHED_NS="$NAMESPACE-unwatched"
# The tag pipeline.yaml names for the custom worker group.
CUSTOM_IMAGE=sluice-custom-worker:dev
OPERATOR_IMAGE="sluice-operator:$IMAGE_TAG"
INGRESS_IMAGE="sluice-web-ingress:$IMAGE_TAG"
WORKER_IMAGE="sluice-exec-worker:$IMAGE_TAG"

log() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'kind-e2e: FAILED: %s\n' "$*" >&2
  exit 1
}

# --- tools ------------------------------------------------------------------

missing=()
for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "kind-e2e: missing required tool(s): ${missing[*]}" >&2
  echo "kind-e2e: this suite needs docker (with a running engine), kind, kubectl, helm and curl" >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "kind-e2e: docker is installed but no container engine answers (docker info failed)" >&2
  exit 2
fi

# --- teardown (also on failure) ---------------------------------------------

pf_pids=()
load_pid=""
cluster_created=0

collect() {
  mkdir -p "$ARTIFACTS"
  log "collecting logs into $ARTIFACTS"
  local ns pod
  for ns in "$OPERATOR_NS" "$NAMESPACE" "$UNWATCHED_NS"; do
    kubectl get all,networkpolicy,configmap,pvc,events -n "$ns" -o wide >"$ARTIFACTS/$ns-get.txt" 2>&1 || true
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
  kind export logs "$ARTIFACTS/kind" --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null; fi
  for pid in "${pf_pids[@]}"; do kill "$pid" 2>/dev/null; done
  if [ "$cluster_created" = 1 ]; then
    collect
    if [ "$KEEP_CLUSTER" = 1 ]; then
      log "KEEP_CLUSTER=1: leaving cluster $CLUSTER_NAME"
    else
      log "deleting kind cluster $CLUSTER_NAME"
      kind delete cluster --name "$CLUSTER_NAME"
    fi
  fi
  if [ "$rc" = 0 ]; then log "kind-e2e: all checks passed"; else printf 'kind-e2e: exit %s (artifacts in %s)\n' "$rc" "$ARTIFACTS" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers ----------------------------------------------------------------

# port_forward SERVICE LOCAL_PORT: port-forward service/SERVICE:80 and wait until it answers.
port_forward() {
  local svc="$1" port="$2" i
  kubectl port-forward -n "$NAMESPACE" "service/$svc" "$port:80" >"$ARTIFACTS/port-forward-$svc.log" 2>&1 &
  pf_pids+=("$!")
  for i in $(seq 1 60); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then return 0; fi
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

# pods_of PIPELINE GROUP: names of the group's running pods.
pods_of() {
  kubectl get pods -n "$NAMESPACE" -l "sluice.dev/pipeline=$1,sluice.dev/group=$2" \
    --field-selector=status.phase=Running -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

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

log "installing Calico $CALICO_VERSION"
kubectl apply -f "https://raw.githubusercontent.com/projectcalico/calico/$CALICO_VERSION/manifests/calico.yaml" >/dev/null
kubectl rollout status -n kube-system daemonset/calico-node --timeout="$TIMEOUT"
kubectl rollout status -n kube-system deployment/calico-kube-controllers --timeout="$TIMEOUT"
kubectl wait --for=condition=Ready nodes --all --timeout="$TIMEOUT"

# --- 2. images --------------------------------------------------------------

if [ "$SKIP_BUILD" != 1 ]; then
  export DOCKER_BUILDKIT=1
  for target in operator web-ingress exec-worker; do
    log "building sluice-$target:$IMAGE_TAG"
    docker build -f docker/Dockerfile --target "$target" -t "sluice-$target:$IMAGE_TAG" .
  done
  log "building $CUSTOM_IMAGE"
  docker build -f examples/custom-worker/Dockerfile -t "$CUSTOM_IMAGE" .
fi
# Redis and the probe pods use redis:7.4-alpine: pull once, load, spare the registry.
docker pull redis:7.4-alpine >/dev/null
for image in "$OPERATOR_IMAGE" "$INGRESS_IMAGE" "$WORKER_IMAGE" "$CUSTOM_IMAGE" redis:7.4-alpine; do
  log "kind load docker-image $image"
  kind load docker-image "$image" --name "$CLUSTER_NAME"
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
  --set logFormat=text --set autoscaleInterval=3s
kubectl rollout status -n "$OPERATOR_NS" deployment/sluice-operator --timeout="$TIMEOUT"

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
kubectl apply -n "$NAMESPACE" -f examples/orders-redis.yaml
kubectl apply -n "$NAMESPACE" -f examples/custom-worker/pipeline.yaml
kubectl apply -n "$NAMESPACE" -f examples/websocket.yaml
kubectl apply -n "$NAMESPACE" -f examples/graphql.yaml
kubectl apply -n "$NAMESPACE" -f examples/streaming.yaml
kubectl apply -n "$UNWATCHED_NS" -f examples/hello.yaml
for p in hello orders-redis scoring websocket graphql streaming; do wait_ready "$p"; done
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
port_forward scoring 18083
expect_answer 18081 /v1/hello '{"name":"world"}' '{"greeting":"hello, world"}'
expect_answer 18082 /v1/orders '{"id":"A1","type":"priority","items":3}' \
  '{"order":"A1","price":0,"status":"accepted","summary":"3 item(s) in the rush lane"}'
expect_answer 18082 /v1/orders '{"id":"B2","type":"bulk","items":2}' \
  '{"order":"B2","price":5,"status":"accepted","summary":"2 item(s) in the standard lane"}'
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

# --- 6. kill a worker during load -------------------------------------------

log "killing a worker pod of orders-redis/cpu during a load of requests"
kubectl scale -n "$NAMESPACE" deployment/orders-redis-cpu --replicas=2
kubectl rollout status -n "$NAMESPACE" deployment/orders-redis-cpu --timeout="$TIMEOUT"
load_dir="$ARTIFACTS/load"
mkdir -p "$load_dir"
: >"$load_dir/ok"
: >"$load_dir/failed"
requests=300
(
  for i in $(seq 1 "$requests"); do
    want="{\"order\":\"L$i\",\"price\":5,\"status\":\"accepted\",\"summary\":\"1 item(s) in the standard lane\"}"
    got="$(curl -sS --max-time 15 http://127.0.0.1:18082/v1/orders -d "{\"id\":\"L$i\",\"type\":\"bulk\",\"items\":1}" 2>&1)" || true
    if [ "$got" = "$want" ]; then echo "$i" >>"$load_dir/ok"; else echo "$i $got" >>"$load_dir/failed"; fi
  done
) &
load_pid=$!
sleep 3
victim="$(pods_of orders-redis cpu | head -n 1)"
[ -n "$victim" ] || die "no running cpu worker pod to kill"
echo "deleting pod $victim (grace period 0)"
kubectl delete pod -n "$NAMESPACE" "$victim" --grace-period=0 --force --wait=false
wait "$load_pid" || true
load_pid=""
ok="$(wc -l <"$load_dir/ok")"
if [ -s "$load_dir/failed" ]; then
  head -n 20 "$load_dir/failed" >&2
  die "$(wc -l <"$load_dir/failed") of $requests requests failed while a worker was killed"
fi
[ "$ok" -eq "$requests" ] || die "only $ok of $requests requests answered"
echo "ok  $requests/$requests requests answered while $victim was killed"

# --- 7. spec change and rollout ---------------------------------------------

log "changing a node's with (summarize status accepted -> queued) and checking the rollout"
old_io="$(pods_of orders-redis io | sort)"
old_hash="$(kubectl get deployment -n "$NAMESPACE" orders-redis-io -o jsonpath='{.spec.template.metadata.annotations.sluice\.dev/config-hash}')"
kubectl patch streampipeline -n "$NAMESPACE" orders-redis --type=json -p \
  '[{"op":"replace","path":"/spec/nodes/4/with/template/status","value":"queued"}]'
new_hash=""
for _ in $(seq 1 60); do
  new_hash="$(kubectl get deployment -n "$NAMESPACE" orders-redis-io -o jsonpath='{.spec.template.metadata.annotations.sluice\.dev/config-hash}')"
  [ "$new_hash" != "$old_hash" ] && break
  sleep 2
done
[ "$new_hash" != "$old_hash" ] || die "config hash of orders-redis-io did not change after the spec change"
for d in orders-redis-web orders-redis-cpu orders-redis-io; do
  kubectl rollout status -n "$NAMESPACE" "deployment/$d" --timeout="$TIMEOUT"
done
wait_ready orders-redis
new_io="$(pods_of orders-redis io | sort)"
if [ -n "$(comm -12 <(echo "$old_io") <(echo "$new_io"))" ]; then
  die "io worker pods were not replaced: before [$old_io], after [$new_io]"
fi
echo "ok  config hash $old_hash -> $new_hash, io pods replaced"
# The ingress pod was replaced too: forward again.
kill "${pf_pids[1]}" 2>/dev/null || true
port_forward orders-redis 18084
expect_answer 18084 /v1/orders '{"id":"A1","type":"priority","items":3}' \
  '{"order":"A1","price":0,"status":"queued","summary":"3 item(s) in the rush lane"}'

# --- 8. NetworkPolicy -------------------------------------------------------

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
  kubectl run -n "$NAMESPACE" "$name" --rm -i --restart=Never --image=redis:7.4-alpine "$@" \
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

# --- 8b. autoscaling ---------------------------------------------------------

log "autoscaling: a backlog on group io scales it up"
# One envelope at a time per io worker, each taking 2 s: a burst of requests
# queues up on io's stream and the builtin autoscaler (every 3 s here) must
# add replicas. The answers change; the pipeline is deleted next anyway.
kubectl patch streampipeline -n "$NAMESPACE" orders-redis --type=json -p '[
  {"op": "replace", "path": "/spec/groups/2", "value": {"name": "io", "role": "worker", "concurrency": 1,
    "autoscale": {"minReplicas": 1, "maxReplicas": 4, "targetBacklogPerReplica": 5}}},
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
scaled=""
for _ in $(seq 1 60); do
  replicas="$(kubectl get deployment -n "$NAMESPACE" orders-redis-io -o jsonpath='{.spec.replicas}')"
  if [ "${replicas:-1}" -gt 1 ]; then scaled="$replicas"; break; fi
  sleep 1
done
for pid in "${burst_pids[@]}"; do wait "$pid" || true; done
[ -n "$scaled" ] || die "orders-redis-io was not scaled up under a backlog"
kubectl get streampipeline -n "$NAMESPACE" orders-redis \
  -o jsonpath='{.status.groups[?(@.name=="io")].lastScale.reason}' | grep -q backlog ||
  die "no lastScale with a backlog reason in the status of orders-redis"
echo "ok  io scaled up to $scaled replicas under a backlog"

# --- 9. delete --------------------------------------------------------------

log "deleting orders-redis: every owned object must go"
uid="$(kubectl get streampipeline -n "$NAMESPACE" orders-redis -o jsonpath='{.metadata.uid}')"
kubectl delete streampipeline -n "$NAMESPACE" orders-redis --wait=true --timeout="$TIMEOUT"
kinds=configmaps,secrets,services,statefulsets,deployments,poddisruptionbudgets,horizontalpodautoscalers,ingresses,networkpolicies,pods,persistentvolumeclaims
left=""
for _ in $(seq 1 60); do
  left="$(kubectl get "$kinds" -n "$NAMESPACE" -l sluice.dev/pipeline=orders-redis -o name 2>/dev/null)"
  owned="$(kubectl get "$kinds" -n "$NAMESPACE" -o json |
    grep -c "\"uid\": \"$uid\"" || true)"
  [ -z "$left" ] && [ "$owned" = 0 ] && break
  sleep 2
done
[ -z "$left" ] || die "objects of orders-redis left after delete: $left"
[ "$owned" = 0 ] || die "$owned object(s) still owned by the deleted pipeline (uid $uid)"
echo "ok  nothing of orders-redis is left"
# The other pipelines are unaffected.
expect_answer 18081 /v1/hello '{"name":"again"}' '{"greeting":"hello, again"}'

log "done"
