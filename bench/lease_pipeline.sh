#!/usr/bin/env bash
# gptui-code's training pipeline on a lent GPU machine (bench/NOTES.md, session 9), one stage per
# device call, everything under runs/ (kept between the calls of one lease):
#   upload      (optional) copy .carry/up/sp.* (pieces of a tar of the model to continue from,
#               at most 64 MiB a call) into runs/up/; repeat with the next pieces
#   prep SECS   setup, unpack .carry/corpus.tar.xz + .carry/exercism.tar.xz, prepare the code
#               (held-out files fixed by exports/corpus.json), mine SFT pairs in the background,
#               pretrain for what is left of SECS (from scratch, or INIT=runs/init/gptui-code)
#   train2 SECS resume, lengthened to what SECS holds; the WSD decay lands at the end
#   finish      SFT (SFT_MIX=1: replay code windows), evals, greedy funceval, fp16 shards of the
#               SFT model (and of the base with SHIP_BASE=1) cut into 16 MB pieces under runs/
#   chunk A B.. copy those pieces to $OUT (four per call: 16 MiB a file, 64 MiB a call)
# Local dry run: TINY=1 SRCS="dir ..." (tiny preset, CPU).
set -uo pipefail
stage=$1; shift || true
R=runs; mkdir -p $R; OUT=${OUT:-$R/out}; mkdir -p $OUT
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; GT="python3 -m gptui.training"
log() { echo "[$(date +%T)] $*" | tee -a $R/pipeline.log; }
if [ -n "${TINY:-}" ]; then
  SRCS=${SRCS:?}; MINE=$SRCS; PRESET=tiny; MB=4; BT=1024; EXTRA="--device cpu --eval-every 5 --save-every 5 --eval-tokens 2048"; NPROC=2
  SFT_ARGS="--steps 6 --batch-tokens 512 --micro-batch 2 --device cpu --eval-every 3 --save-every 6 --eval-tokens 2048"
else
  SRCS="/usr/lib/python3.12 /opt/torch/.venv/lib/python3.12/site-packages $R/src/gathered"; PRESET=gpt2
  MINE="/usr/lib/python3.12 $R/src/gathered $R/src/exercism"; MB=128; BT=262144
  EXTRA="--eval-every 250 --save-every 500 --log-every 10"; NPROC=16
  SFT_ARGS="--steps 600 --batch-tokens 65536 --micro-batch 64 --lr 2e-4 --warmup 30 --eval-every 150 --save-every 600 --log-every 10"
fi
if [ -n "${INIT:-}" ]; then FROM="--init $INIT"; else FROM="--preset $PRESET"; fi
PRE="--data $R/data/code $FROM --out $R/base --schedule wsd --decay-frac 0.25 --lr 1.5e-3 --warmup 150 --batch-tokens $BT --micro-batch $MB"

setup() {
  if [ -z "${TINY:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
    python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || { echo "install failed"; exit 1; }
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  fi
}

case $stage in
upload)
  mkdir -p $R/up && cp .carry/up/sp.* $R/up/ && ls $R/up
  if [ -n "${ASSEMBLE:-}" ]; then mkdir -p $R/init && cat $R/up/sp.* | tar -x -C $R/init && ls $R/init; fi
  ;;
prep)  # and pretrain part 1: the SFT data is mined on the CPUs while the GPU trains
  setup; secs=${1:?seconds}; t0=$(date +%s)
  if [ -z "${TINY:-}" ]; then
    mkdir -p $R/src/gathered $R/src/exercism && tar -xJf .carry/corpus.tar.xz -C $R/src/gathered && tar -xJf .carry/exercism.tar.xz -C $R/src/exercism || exit 1
  fi
  log "prepare code"; $GT prepare $SRCS --out $R/data/code --num-proc $NPROC --holdout-from ${HOLDOUT:-exports/corpus.json} || exit 1
  cp $R/data/code/manifest.json $OUT/code-manifest.json
  log "prepare sft (background)"
  ($GT prepare $(for s in $MINE; do echo --mine $s; done) --holdout $R/data/code --out $R/data/sft --num-proc 8 > $R/sft-prepare.log 2>&1; echo "sft prepare rc $?" >> $R/sft-prepare.log) &
  left=$(( secs - ($(date +%s) - t0) ))
  log "pretrain part 1 ($left s)"
  timeout -s INT -k 90 $left $GT pretrain $PRE --steps 100000 $EXTRA; log "rc $?"
  wait; tail -3 $R/sft-prepare.log
  cp $R/base/metrics.jsonl $OUT/base-metrics.jsonl; cp $R/data/sft/manifest.json $OUT/sft-manifest.json
  ;;
train2)
  setup; secs=${1:?seconds}
  total=$(python3 - "$R/base/metrics.jsonl" "$secs" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
step = rows[-1]["step"]; rates = [r["tokens_per_s"] for r in rows[len(rows)//2:] if r.get("tokens_per_s")]
bt = json.load(open(sys.argv[1].replace("metrics.jsonl", "run.json")))["batch_tokens"]
train_s = float(sys.argv[2]) - 100  # compile, evaluation, the final save
print(step + int(train_s * statistics.median(rates) / bt))
PY
)
  log "pretrain part 2 to step $total"
  timeout -s INT -k 90 $secs $GT pretrain --out $R/base --resume --steps $total; log "rc $?"
  cp $R/base/metrics.jsonl $OUT/base-metrics.jsonl
  ;;
finish)
  setup
  MIX=""; [ -n "${SFT_MIX:-}" ] && MIX="--mix-data $R/data/code --mix-rate 0.25"
  log "sft"; $GT sft --init $R/base/latest --data $R/data/sft --out $R/sft $SFT_ARGS $MIX || exit 1
  for m in base/latest sft/latest; do
    log "eval $m"; $GT eval $R/$m --data $R/data/code --split val --json > $OUT/eval-${m%%/*}.json
  done
  for s in exports/gptui-small .carry/small; do
    [ -f $s/config.json ] && { log "eval $s"; $GT eval $s --data $R/data/code --split val --json > $OUT/eval-small.json; }
  done
  for m in $([ -z "${TINY:-}" ] && echo sft base); do
    log "funceval $m"; $GT funceval $R/$m/latest --backend ${FE_BACKEND:-cuda} --samples 0 --json > $R/funceval-$m.json
    python3 -c "import json,sys; d=json.load(open('$R/funceval-$m.json')); print('$m', {k: v for k, v in d.items() if k != 'tasks'})" | head -c 600
  done
  log "fp16 shards"
  [ -n "${SHIP_BASE:-}" ] && python3 - $R/base/latest $R/ship/gptui-code-base <<'PY'
import sys, torch
from gptui.core.checkpoint import load_model, read_config, read_card, save_checkpoint
from gptui.training.export import MAX_SHARD_BYTES
model, enc = load_model(sys.argv[1]); _, _, meta = read_config(sys.argv[1])
save_checkpoint(sys.argv[2], model, enc, provenance=meta.get("provenance", {}), card=read_card(sys.argv[1]),
                dtype=torch.float16, max_shard_bytes=MAX_SHARD_BYTES)
PY
  python3 - $R/sft/latest $R/ship/gptui-code <<'PY'
import sys, torch
from gptui.core.checkpoint import load_model, read_config, read_card, save_checkpoint
from gptui.training.export import MAX_SHARD_BYTES
model, enc = load_model(sys.argv[1]); _, _, meta = read_config(sys.argv[1])
save_checkpoint(sys.argv[2], model, enc, provenance=meta.get("provenance", {}), card=read_card(sys.argv[1]),
                dtype=torch.float16, max_shard_bytes=MAX_SHARD_BYTES)
PY
  (cd $R/ship && tar -cf ../ship.tar gptui-code*) && (cd $R && rm -f sp.* && split -b 16000000 -d -a 2 ship.tar sp. && sha256sum ship.tar && ls sp.*)
  tar -czf $OUT/misc.tgz $R/sft/metrics.jsonl $R/base/metrics.jsonl $R/base/run.json $R/sft/run.json $R/funceval-*.json $R/pipeline.log $R/data/code/val-*.npy $R/data/code/manifest.json
  ;;
chunk)
  for n in "$@"; do cp $R/sp.$n $OUT/; done; ls -la $OUT
  ;;
esac
