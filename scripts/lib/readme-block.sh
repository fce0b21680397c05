# shellcheck shell=bash
# readme_block FILE NAME: prints the body of the fenced code block that stands
# between the lines
#
#   <!-- NAME:begin -->
#   ```sh
#   ...
#   ```
#   <!-- NAME:end -->
#
# in FILE, without the fences. Fails (status 1) when a marker or the fence is
# missing, or the block is empty.
#
# The README's Kubernetes section marks its copy-paste path this way;
# kind-e2e/run.sh runs the blocks as they are and scripts/check-deploy lints
# them, so the README and the kind suite cannot drift apart.
readme_block() {
  local file="$1" name="$2"
  awk -v begin="<!-- $name:begin -->" -v end="<!-- $name:end -->" '
    $0 == begin { inside = 1; seen_begin = 1; next }
    $0 == end { if (inside) seen_end = 1; inside = 0; next }
    inside && /^```/ { fenced = !fenced; next }
    inside && fenced { print; lines++ }
    END { exit (seen_begin && seen_end && lines > 0 && !fenced) ? 0 : 1 }
  ' "$file"
}
