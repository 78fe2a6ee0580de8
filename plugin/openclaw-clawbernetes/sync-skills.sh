#!/usr/bin/env bash
# Copies the top-level skills/ into the plugin root, where OpenClaw loads bundled skills from (it
# refuses paths that point outside the plugin). The skills test fails when the copy is stale.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rm -rf "$here/skills"
mkdir -p "$here/skills"
for dir in "$here"/../../skills/*/; do
    [ -f "$dir/SKILL.md" ] || continue
    name=$(basename "$dir")
    mkdir -p "$here/skills/$name"
    cp "$dir/SKILL.md" "$here/skills/$name/SKILL.md"
done
