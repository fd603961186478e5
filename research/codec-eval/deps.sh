#!/bin/sh
# Dependency counts per crate, each resolved alone (no feature unification with
# the other candidates), plus publication dates from cargo's index cache and
# an unsafe grep. Output: results-deps.md
cd "$(dirname "$0")/nodefault" || exit 1
{
echo "| dependency spec | crates in tree (incl. itself) | of which proc-macro | cargo tree lines |"
echo "|---|---:|---:|---:|"
for spec in 'mqtt-proto = "0.4"' 'mqtt-proto = { version = "0.4", default-features = false }' \
            'rmqtt-codec = "0.3"' 'mqute-codec = "0.4"' 'mqttbytes = { version = "0.6", features = ["v5"] }' \
            'mqttrs = "0.4"' 'mqttrs = { version = "0.4", default-features = false }'; do
  printf '[package]\nname = "nodefault"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s\n[workspace]\n' "$spec" > Cargo.toml
  rm -f Cargo.lock
  t() { CARGO_TARGET_DIR=../../target/codec-eval cargo tree -e normal "$@" 2>/dev/null; }
  all=$(t --prefix none | sed 's/ (\*)//' | sort -u | grep -v '^nodefault' | wc -l)
  pm=$(t --prefix none | sed 's/ (\*)//' | sort -u | grep -c proc-macro)
  lines=$(t | wc -l)
  echo "| \`$spec\` | $all | $pm | $lines |"
done
echo
echo "Publication times (field pubtime of cargo's sparse-index cache):"
echo
for c in rm/qt/rmqtt-codec mq/ut/mqute-codec mq/tt/mqtt-proto mq/tt/mqttbytes mq/tt/mqttrs; do
  tr '\0' '\n' < "$(ls -d ~/.cargo/registry/index/*/.cache | head -1)/$c" | grep '^{' | python3 -c '
import sys, json
v = [json.loads(l) for l in sys.stdin if l.startswith("{")]
print("- %s: %s" % (v[-1]["name"], ", ".join("%s (%s)" % (d["vers"], (d.get("pubtime") or "?")[:10]) for d in v)))'
done
echo
echo "unsafe (non-comment lines containing the word, src/ only, tests excluded):"
echo
for c in mqtt-proto-0.4.0 rmqtt-codec-0.3.1 mqute-codec-0.4.2 mqttbytes-0.6.0 mqttrs-0.4.1; do
  d=$(ls -d ~/.cargo/registry/src/*/$c | head -1)
  n=$(grep -rnw unsafe "$d/src" | grep -v '/tests/' | grep -vE ':[0-9]+:\s*//' | wc -l)
  echo "- $c: $n"
  grep -rnw unsafe "$d/src" | grep -v '/tests/' | grep -vE ':[0-9]+:\s*//' | sed "s|$d/|    - |"
done
} > ../results-deps.md
