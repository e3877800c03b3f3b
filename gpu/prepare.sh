#!/usr/bin/env bash
# Stage, here, everything the lent GPU machine needs and cannot make or fetch, into .gpu/ (ignored by git):
#   .gpu/p1 ... .gpu/pN   onnxruntime-gpu in parts, and .gpu/run/install.sh   (../shared/gpu/stage.sh)
#   .gpu/m1 ... .gpu/mK   one tar in parts: models, photographs and CPU reference logits (gpu/stage.py) and the
#                         authors' `tlt` wheel; .gpu/run/unpack.sh joins, checks and unpacks it there
# Each folder is at most PART_MIB (default 59) MiB: one device call carries 64 MiB with the work tree.
# It ends by printing the device calls to make, back to back; the last one runs gpu/run.sh.
#
# Usage, from the project root:  bash gpu/prepare.sh [PYTHON]   (PYTHON: one with the kit and its test extras;
# default .venv/bin/python). Environment: PART_MIB, ORT_GPU_VERSION (default 1.31.1, the CUDA 13 build),
# PRESET (default lvvit_s), VARIANTS (images per bundled photo, default 6).
set -euo pipefail
python=${1:-.venv/bin/python}
part_mib=${PART_MIB:-59}
ort_gpu_version=${ORT_GPU_VERSION:-1.31.1}
root=$(git rev-parse --show-toplevel)
cd "$root"
python=$(realpath -s "$python")  # -s: keep a venv's symlinked interpreter
stage_sh=$(realpath ../shared/gpu/stage.sh)

# 1. onnxruntime-gpu. stage.sh empties .gpu first, so it runs first. In a git worktree .git is a file and
# stage.sh's line that appends to .git/info/exclude would fail; .gitignore already lists /.gpu/.
if [ -d .git ]; then
  bash "$stage_sh" "$ort_gpu_version" "$part_mib"
else
  sed '/info\/exclude/d' "$stage_sh" | bash -s -- "$ort_gpu_version" "$part_mib"
fi

# 2. models, photographs, reference logits; the tlt wheel for the PyTorch baselines.
"$python" gpu/stage.py .gpu/payload --preset "${PRESET:-lvvit_s}" --variants "${VARIANTS:-6}"
"$python" -m pip download -q --no-deps --only-binary=:all: -d .gpu/payload/wheels tlt==0.2.0

# 3. one tar in parts, and the script that puts it back together on the machine.
tar -cf .gpu/payload.tar -C .gpu payload
sha=$(sha256sum .gpu/payload.tar | cut -d' ' -f1)
split -b "${part_mib}M" -d -a 1 .gpu/payload.tar .gpu/chunk.
rm .gpu/payload.tar
k=0
for chunk in .gpu/chunk.*; do
  k=$((k + 1)); mkdir -p ".gpu/m$k"; mv "$chunk" ".gpu/m$k/part"
done
cat > .gpu/run/unpack.sh <<EOT
#!/usr/bin/env bash
# On the GPU machine: join .gpu/m1 ... .gpu/m$k, check the SHA-256, unpack into DEST (default /tmp/lvvit-gpu).
set -e
dest=\${1:-/tmp/lvvit-gpu}
have=\$(ls -d .gpu/m*/part 2>/dev/null | wc -l)
if [ "\$have" != "$k" ]; then echo "only \$have of $k model parts are here: the machine went back between calls"; exit 1; fi
mkdir -p "\$dest"
cat \$(for i in \$(seq 1 $k); do echo .gpu/m\$i/part; done) > "\$dest/payload.tar"
echo "$sha  \$dest/payload.tar" | sha256sum -c --quiet || { echo "joined payload is corrupt"; exit 1; }
tar -xf "\$dest/payload.tar" -C "\$dest" && rm "\$dest/payload.tar"
echo "unpacked \$dest/payload: \$(ls "\$dest/payload" | tr '\n' ' ')"
EOT
chmod +x .gpu/run/unpack.sh

# 4. the calls: one part each, biggest first; the last call carries the small parts that fit together, with
# .gpu/run, and runs gpu/run.sh. The work tree travels with each (tracked and untracked files git does not ignore).
tree_mib=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{printf "%.1f", $1 / 1048576}')
echo
echo "device calls, back to back (the machine goes back after 30 s idle); the work tree (${tree_mib} MiB) goes with each:"
du -sm .gpu/p[0-9]* .gpu/m[0-9]* | sort -k1,1nr -k2,2V | awk -v limit="$part_mib" '
  { size[NR] = $1; name[NR] = $2 }
  END {
    last = NR; sum = size[NR]
    while (last > 1 && sum + size[last - 1] <= limit) { last--; sum += size[last] }
    for (i = 1; i < last; i++) printf "  %d. carry [\"%s\"] (%d MiB), command: ls .gpu\n", i, name[i], size[i]
    carry = ""
    for (i = last; i <= NR; i++) carry = carry "\"" name[i] "\", "
    printf "  %d. carry [%s\".gpu/run\"] (%d MiB), timeout_s 540, command: bash gpu/run.sh\n", last, carry, sum
  }'
