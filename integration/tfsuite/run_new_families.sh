#!/usr/bin/env bash
# transformers' own model tests for the four newer families (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, Gemma 3), every
# model of those classes patched by vtr as it is built. A development check, not part of the test suite.
#
# usage: integration/tfsuite/run_new_families.sh TRANSFORMERS_CHECKOUT [CONFIG ...]   (from anywhere)
#   TRANSFORMERS_CHECKOUT  a local transformers source tree; its tests/models/<family>/test_modeling_<family>.py
#                          (and any tests/models/<m>/test_modeling_<m>.py they import) are run
#   CONFIG                 any of: base (unpatched), id (fastervlm keep=1.0), pre (fastervlm keep=0.5, generate's
#                          shape checks relaxed), merge (divrelay keep=0.5: merged tokens with proportional
#                          attention, relaxed as pre); default: base id pre. base always runs first when others do.
# Environment: TFSUITE_TREE (default ../shared/tfsuite/tree.tar.gz next to the checkout), TFS_DEPS (a folder
# holding parameterized, httpx, requests when .venv lacks them), TFS_SUITES (default: the four), TFS_KEEP=1 keeps
# the work folder (printed). No network: nothing is downloaded or installed.
# Verdict: a patched failure counts only if the test does not fail unpatched too (version mismatches between the
# checkout's tests and the installed transformers fail both ways); at pre, EXPECTED shape checks are allowed.
set -u
SRC=${1:?usage: run_new_families.sh TRANSFORMERS_CHECKOUT [base|id|pre ...]}; shift
SRC=$(cd "$SRC" && pwd) || exit 2
CONFIGS=${*:-base id pre}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; ROOT="$(cd "$HERE/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
TREE=${TFSUITE_TREE:-$ROOT/../shared/tfsuite/tree.tar.gz}
SUITES=${TFS_SUITES:-qwen2_5_vl qwen3_vl llava_onevision gemma3}
[ -f "$TREE" ] || { echo "no harness tree at $TREE (set TFSUITE_TREE)"; exit 2; }
W=$(mktemp -d)
if [ "${TFS_KEEP:-0}" = 1 ]; then echo "work folder: $W"; else trap 'rm -rf "$W"' EXIT; fi

tar -xzf "$TREE" -C "$W"
mkdir -p "$W/tf/src" && ln -s "$("$PY" -c 'import transformers,os;print(os.path.dirname(transformers.__file__))')" "$W/tf/src/transformers"
export PYTHONPATH="${TFS_DEPS:-}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$PY" -c "import parameterized, httpx, requests" 2>/dev/null || {
  echo "the tests need parameterized, httpx and requests: install them into a folder and pass it as TFS_DEPS, e.g."
  echo "  $PY -m pip install --target /tmp/tfs_deps parameterized==0.9.0 httpx requests"; exit 2; }

# the checkout's test files, and the sibling model test modules they import (gemma3 imports gemma's tester)
T="$W/tf/tests/models"; HAVE=""
for s in $SUITES; do
  f="$SRC/tests/models/$s/test_modeling_$s.py"
  if [ ! -f "$f" ]; then echo "$s: $f not in the checkout, suite skipped"; continue; fi
  mkdir -p "$T/$s" && cp "$f" "$T/$s/" && touch "$T/$s/__init__.py"; HAVE="$HAVE $s"
  for m in $(grep -oE "from \.\.\.models\.[a-z0-9_]+\.test_modeling_[a-z0-9_]+ import" "$f" | sed -E 's/.*models\.([a-z0-9_]+)\..*/\1/' | sort -u); do
    [ -f "$T/$m/test_modeling_$m.py" ] && continue
    mkdir -p "$T/$m" && cp "$SRC/tests/models/$m/test_modeling_$m.py" "$T/$m/" && touch "$T/$m/__init__.py"
  done
done
[ -n "$HAVE" ] || { echo "none of the four test files is in $SRC"; exit 2; }
# tests/causal_lm_tester.py (gemma's tester) imports the distributed mixins, whose helper module the tree lacks
if [ ! -f "$W/tf/tests/distributed_testing_utils.py" ]; then
  if [ -f "$SRC/tests/distributed_testing_utils.py" ]; then cp "$SRC/tests/distributed_testing_utils.py" "$W/tf/tests/"
  else cp "$HERE/distributed_stub.py" "$W/tf/tests/distributed_testing_utils.py"; fi
fi
# patch the four classes too, and add the compatibility shims (see README.md)
"$PY" - "$W/tf/tests/conftest.py" "$HERE/conftest_new_families.py" <<'PY'
import sys
path, extra = sys.argv[1:]
text = open(path).read()
anchor = '    "VideoLlavaForConditionalGeneration",\n'
assert anchor in text, "the harness conftest's _TARGETS changed; update run_new_families.sh"
new = "".join(f'    "{c}",\n' for c in ("Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration",
                                         "LlavaOnevisionForConditionalGeneration", "Gemma3ForConditionalGeneration"))
open(path, "w").write(text.replace(anchor, anchor + new, 1) + "\n\n" + open(extra).read())
PY

run() {  # suite config
  ( cd "$W/tf" && case $2 in
      base) env -u VTR_REDUCER -u VTR_KEEP -u VTR_RELAX_SHAPES -u VTR_EXTRA "$PY" -m pytest "tests/models/$1/test_modeling_$1.py" -q -p no:cacheprovider -k "not slow" --disable-warnings --junitxml="$W/$1.$2.xml" ;;
      id)   VTR_REDUCER=fastervlm VTR_KEEP=1.0 "$PY" -m pytest "tests/models/$1/test_modeling_$1.py" -q -p no:cacheprovider -k "not slow" --disable-warnings --junitxml="$W/$1.$2.xml" ;;
      pre)  VTR_REDUCER=fastervlm VTR_KEEP=0.5 VTR_RELAX_SHAPES=1 "$PY" -m pytest "tests/models/$1/test_modeling_$1.py" -q -p no:cacheprovider -k "not slow" --disable-warnings --junitxml="$W/$1.$2.xml" ;;
      merge) VTR_REDUCER=divrelay VTR_KEEP=0.5 VTR_RELAX_SHAPES=1 "$PY" -m pytest "tests/models/$1/test_modeling_$1.py" -q -p no:cacheprovider -k "not slow" --disable-warnings --junitxml="$W/$1.$2.xml" ;;
    esac > "$W/$1.$2.log" 2>&1 )
}
case " $CONFIGS " in *" id "*|*" pre "*|*" merge "*) case " $CONFIGS " in *" base "*) ;; *) CONFIGS="base $CONFIGS" ;; esac ;; esac
ORDERED=""; for c in base id pre merge; do case " $CONFIGS " in *" $c "*) ORDERED="$ORDERED $c" ;; esac; done
for s in $HAVE; do for c in $ORDERED; do run "$s" "$c"; done; done  # one at a time: small machines

# shape checks against the unreduced prompt (run.sh's list), legitimately different once tokens are removed, and
# the shift_labels test, which builds its targets from the patched logits (kept rows only)
EXPECTED="test_attention_outputs test_hidden_states_output test_past_key_values_format test_forward_with_logits_to_keep test_generate_with_static_cache test_causal_lm_loss_honors_shift_labels"
"$PY" "$HERE/summarize.py" "$W" "$ORDERED" "$HAVE" $EXPECTED
