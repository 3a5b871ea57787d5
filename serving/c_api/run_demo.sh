#!/usr/bin/env bash
# Runs the demo's exports from C (make c-example): the newest version of the text model generates,
# the newest stock model predicts the next price. The tensor names come from `saved_model_cli show`,
# the way a C, Java or Go developer looks them up.
#   serving/c_api/run_demo.sh BINARY TEXT_BASE STOCK_BASE
set -euo pipefail
binary=$1 text_base=$2 stock_base=$3
cli=${SAVED_MODEL_CLI:-saved_model_cli}

latest() {  # the newest version directory under a base path
  local version
  version=$(ls "$1" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1 || true)
  if [ -z "$version" ]; then
    echo "error: no exported version under $1; run make demo first" >&2
    exit 2
  fi
  echo "$1/$version"
}

signature() { "$cli" show --dir "$1" --tag_set serve --signature_def "$2" 2>/dev/null; }
tensor() {  # tensor SIGNATURE_TEXT KEY -> the graph tensor of inputs/outputs['KEY']
  awk -v key="['$2']" 'index($0, key) {found = 1} found && $1 == "name:" {print $2; exit}' <<< "$1"
}

text=$(latest "$text_base")
generate=$(signature "$text" generate)
echo "$text, signature generate (prompt 'The ', 60 tokens, temperature 0.5, seed 1):"
"$binary" "$text" "$(tensor "$generate" text)=string:The " "$(tensor "$generate" max_tokens)=int32:60" \
  "$(tensor "$generate" temperature)=float:0.5" "$(tensor "$generate" seed)=int64:1" -- \
  "$(tensor "$generate" generated)" 2>/dev/null

stock=$(latest "$stock_base")
predict=$(signature "$stock" serving_default)
read -r days features < <(grep -A2 "\['window'\]" <<< "$predict" | sed -n 's/.*shape: (-1, \([0-9]*\), \([0-9]*\)).*/\1 \2/p')
values=$(awk -v d="$days" -v f="$features" 'BEGIN {for (i = 0; i < d * f; i++) printf "%s%.2f", (i ? "," : ""), 100 + int(i / f) * 0.5}')
echo "$stock, signature serving_default ($days days rising from 100.00 to $(awk -v d="$days" 'BEGIN {printf "%.2f", 100 + (d - 1) * 0.5}')):"
"$binary" "$stock" "$(tensor "$predict" window)=float[1,$days,$features]:$values" -- \
  "$(tensor "$predict" next_value)" 2>/dev/null
