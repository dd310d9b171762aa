#!/usr/bin/env bash
# gptui-code's training pipeline on a lent GPU machine (bench/NOTES.md, sessions 9-10), one stage per
# device call, everything under runs/ (kept between the calls of one lease):
#   upload      copy the pieces in .carry/up/*/ (bench/rebuild_carry.sh: sp.NN of a tar of the model
#               to continue from, cp.NN of the corpus' xz tar; each call carries one .carry/up/N, so
#               nothing is swapped between calls) into runs/up/
#   prep SECS   setup, take any pieces carried with it, unpack the model's pieces into runs/init when
#               INIT is set, unpack the corpus' pieces (or .carry/corpus.tar.xz) + .carry/exercism.tar.xz,
#               prepare the code (held-out files fixed by exports/corpus.json), mine SFT pairs in
#               the background, pretrain for what is left of SECS (from scratch, or INIT=runs/init/gptui-code;
#               STEPS=N ends the run, decay included, at step N; STASH=1: then the stash stage;
#               QUALITY_MIX=R: a share R of the rows are windows of the exercise-shaped repositories
#               (QUALITY_DIRS, prepared apart into runs/data/quality), which the code corpus holds too)
#   train2 SECS resume, lengthened to what SECS holds; the WSD decay lands at the end
#               (STASH=1: then the stash stage in the same call; leave ~40 s of SECS for it)
#   finish      SFT (SFT_MIX=1: replay code windows), blends of base and SFT weights
#               (bench/sft_blend.py), evals, greedy funceval of each, fp16 shards of the pick
#               as folder SHIP_NAME (default gptui-code; and of the base as SHIP_NAME-base with
#               SHIP_BASE=1) cut into 16.7 MB pieces, the first three in $OUT
#   stash       fp16 shards of the pretrained base in pieces, the first three in $OUT (then chunk
#               calls): bring the base home before SFT, so a machine lost between calls costs only
#               the SFT stage (session 11 lost a 6% better base that way)
#   chunk A B.. copy those pieces to $OUT (four per call: 16 MiB a file, 64 MiB a call)
#   passk       pass@5 of the shipped pick (sampled, temperature 0.6)
# Local dry run: TINY=1 SRCS="dir ..." (tiny preset, CPU).
set -uo pipefail
stage=$1; shift || true
R=runs; mkdir -p $R; OUT=${OUT:-$R/out}; mkdir -p $OUT
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; GT="python3 -m gptui.training"
log() { echo "[$(date +%T)] $*" | tee -a $R/pipeline.log; }
if [ -n "${TINY:-}" ]; then
  SRCS=${SRCS:?}; MINE=$SRCS; PRESET=tiny; MB=4; BT=1024; EXTRA="--device cpu --eval-every 5 --save-every 5 --eval-tokens 2048"; NPROC=2; HOLD=""
  SFT_ARGS="--steps 6 --batch-tokens 512 --micro-batch 2 --device cpu --eval-every 3 --save-every 6 --eval-tokens 2048"
else
  SRCS="/usr/lib/python3.12 /opt/torch/.venv/lib/python3.12/site-packages $R/src/gathered"; PRESET=gpt2
  MINE="/usr/lib/python3.12 $R/src/gathered $R/src/exercism"; MB=128; BT=262144
  EXTRA="--eval-every 250 --save-every 500 --log-every 10"; NPROC=16; HOLD="--holdout-from exports/corpus.json"
  SFT_ARGS=${SFT_ARGS:-"--steps 300 --batch-tokens 65536 --micro-batch 64 --lr 1e-4 --warmup 20 --eval-every 100 --save-every 300 --log-every 10"}
fi
SHIP_NAME=${SHIP_NAME:-gptui-code}
QUALITY_DIRS=${QUALITY_DIRS:-$(for r in TheAlgorithms+Python keon+algorithms OmkarPathak+pygorithm norvig+pytudes \
  prabhupant+python-ds kamyu104+LeetCode-Solutions neetcode-gh+leetcode qiyuangong+leetcode geekcomputers+Python; do
  echo $R/src/gathered/$r; done)}
if [ -n "${INIT:-}" ]; then FROM="--init $INIT"; else FROM="--preset $PRESET"; fi
PRE="--data $R/data/code $FROM --out $R/base --schedule wsd --decay-frac 0.25 --lr ${LR:-1.5e-3} --warmup ${WARMUP:-150} --batch-tokens $BT --micro-batch $MB"

setup() {
  if [ -z "${TINY:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
    python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || { echo "install failed"; exit 1; }
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  fi
}

ship() {  # checkpoint folder -> fp16 shards
  python3 - "$1" "$2" <<'PY'
import sys, torch
from gptui.core.checkpoint import Checkpoint, load_model, read_card, save_checkpoint
from gptui.training.export import MAX_SHARD_BYTES
model, enc = load_model(sys.argv[1])
save_checkpoint(sys.argv[2], model, enc, provenance=Checkpoint.open(sys.argv[1]).provenance, card=read_card(sys.argv[1]),
              dtype=torch.float16, max_shard_bytes=MAX_SHARD_BYTES)
PY
}
cut() {  # folders under $R/ship -> $R/ship.tar in 16.7 MB pieces $R/sp.NN, the first three in $OUT
  (cd $R/ship && tar -cf ../ship.tar "$@") && (cd $R && rm -f sp.* && split -b 16700000 -d -a 2 ship.tar sp. && mkdir -p evals && sha256sum ship.tar | tee evals/ship.sha256 && ls sp.*) || exit 1
  for p in 00 01 02; do [ -f $R/sp.$p ] && cp $R/sp.$p $OUT/; done
}

stash() {
  log "stash base"; rm -rf $R/ship; mkdir -p $R/ship; ship $R/base/latest $R/ship/$SHIP_NAME-base; cut $SHIP_NAME-base
  cp $R/base/metrics.jsonl $R/base/run.json $OUT/
}

case $stage in
upload)
  mkdir -p $R/up && cp .carry/up/*/* $R/up/ && ls -l $R/up
  ;;
prep)  # and pretrain part 1: the SFT data is mined on the CPUs while the GPU trains
  setup; secs=${1:?seconds}; t0=$(date +%s)
  if [ -z "${TINY:-}" ]; then
    mkdir -p $R/up $R/init $R/src/gathered $R/src/exercism; cp .carry/up/*/* $R/up/ 2>/dev/null
    if [ -n "${INIT:-}" ]; then
      cat $R/up/sp.* | tee >(sha256sum >&2) | tar -x -C $R/init || exit 1
      ls $R/init
    fi
    corpus=.carry/corpus.tar.xz; ls $R/up/cp.* >/dev/null 2>&1 && corpus="$(ls $R/up/cp.*)"
    cat $corpus | tee >(sha256sum >&2) | tar -xJ -C $R/src/gathered && tar -xJf .carry/exercism.tar.xz -C $R/src/exercism || exit 1
  fi
  log "prepare code"; $GT prepare $SRCS --out $R/data/code --num-proc $NPROC $HOLD || exit 1
  cp $R/data/code/manifest.json $OUT/code-manifest.json
  if [ -n "${QUALITY_MIX:-}" ]; then
    log "prepare quality"; $GT prepare $(for d in $QUALITY_DIRS; do [ -d $d ] && echo $d; done) --out $R/data/quality --num-proc $NPROC || exit 1
    cp $R/data/quality/manifest.json $OUT/quality-manifest.json; PRE="$PRE --mix-data $R/data/quality --mix-rate $QUALITY_MIX"
  fi
  log "prepare sft (background)"
  ($GT prepare $(for s in $MINE; do echo --mine $s; done) --holdout $R/data/code --out $R/data/sft --num-proc 8 > $R/sft-prepare.log 2>&1; echo "sft prepare rc $?" >> $R/sft-prepare.log) &
  left=$(( secs - ($(date +%s) - t0) ))
  log "pretrain part 1 ($left s)"
  timeout -s INT -k 90 $left $GT pretrain $PRE --steps ${STEPS:-100000} $EXTRA; log "rc $?"
  wait; tail -3 $R/sft-prepare.log
  cp $R/base/metrics.jsonl $OUT/base-metrics.jsonl; cp $R/data/sft/manifest.json $OUT/sft-manifest.json
  [ -n "${STASH:-}" ] && stash
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
  [ -n "${STASH:-}" ] && stash
  ;;
finish)
  setup; E=$R/evals; mkdir -p $E
  MIX=""; [ -n "${SFT_MIX:-}" ] && MIX="--mix-data $R/data/code --mix-rate 0.25"
  log "sft"; $GT sft --init $R/base/latest --data $R/data/sft --out $R/sft $SFT_ARGS $MIX || exit 1
  ln -sfn base/latest $R/m-base; ln -sfn sft/latest $R/m-sft
  for a in ${BLENDS:-0.5 0.75}; do
    log "blend $a"; python3 bench/sft_blend.py blend $R/base/latest $R/sft/latest $a $R/m-blend$a || exit 1
  done
  names="base sft $(for a in ${BLENDS:-0.5 0.75}; do echo blend$a; done)"
  [ -f $R/init/gptui-code/config.json ] && ln -sfn init/gptui-code $R/m-init && names="$names init"
  for n in $names; do
    log "eval $n"; $GT eval $R/m-$n --data $R/data/code --split val --json > $E/eval-$n.json
    [ $n = init ] && continue
    log "funceval $n"; $GT funceval $R/m-$n --backend ${FE_BACKEND:-cuda} --samples 0 --json > $E/funceval-$n.json
    python3 -c "import json; d=json.load(open('$E/funceval-$n.json')); print('$n', {k: v for k, v in d.items() if k != 'tasks'})" | head -c 600
  done
  pick=$(python3 bench/sft_blend.py pick $E ${names% init}) || exit 1; log "pick $pick"; echo $pick > $E/pick
  log "fp16 shards"; rm -rf $R/ship; mkdir -p $R/ship; shipped=$SHIP_NAME
  [ -n "${SHIP_BASE:-}" ] && ship $R/m-base $R/ship/$SHIP_NAME-base && shipped="$shipped $SHIP_NAME-base"
  ship $R/m-$pick $R/ship/$SHIP_NAME
  cut $shipped  # names, not a glob: cut tars them from inside $R/ship
  tar -czf $OUT/misc.tgz $R/sft/metrics.jsonl $R/base/metrics.jsonl $R/base/run.json $R/sft/run.json $E $R/pipeline.log $R/data/code/val-*.npy $R/data/code/manifest.json $R/data/sft/manifest.json
  ;;
stash)  # the pretrained base, fp16, in pieces (then chunk calls): what a lost machine would take with it
  setup; stash
  ;;
passk)
  setup; log "pass@5"
  timeout ${1:-240} $GT funceval $R/m-$(cat $R/evals/pick) --backend cuda --samples 5 --temperature 0.6 --no-greedy --json > $OUT/passk.json
  python3 -c "import json; d=json.load(open('$OUT/passk.json')); print({k: v for k, v in d.items() if k != 'tasks'})" | head -c 600
  ;;
chunk)
  for n in "$@"; do cp $R/sp.$n $OUT/; done; ls -la $OUT
  ;;
esac
