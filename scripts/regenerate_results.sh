#!/usr/bin/env bash
# Regenerate the results pages with the shipped network, each by the `doc2lora eval` command
# its own header records, so a page and the way it was made cannot drift apart. The page's
# previous JSON is kept as runs/<name>-before.json for `doc2lora compare`.
# On 2 CPU cores, by the CPU: docs/results.md 40-70 minutes, docs/results-needles.md 80-130.
#   usage: scripts/regenerate_results.sh [PAGE.md ...]   (default: both pages)
set -euo pipefail
cd "$(dirname "$0")/.."
pages=("$@")
[ ${#pages[@]} -gt 0 ] || pages=(docs/results.md docs/results-needles.md)
mkdir -p runs
for page in "${pages[@]}"; do
    command=$(grep -m1 '^doc2lora eval ' "$page") || { echo "no doc2lora eval command in $page" >&2; exit 1; }
    json=${page%.md}.json
    [ ! -f "$json" ] || cp "$json" "runs/$(basename "${page%.md}")-before.json"
    echo "+ $command" >&2
    eval "$command"
done
