#!/usr/bin/env bash
# Builds the board image: MicroPython's qemu port (BOARD=MPS2_AN385, an
# emulated Cortex-M3) from the vendored source in ../shared/vendor/, with a
# manifest's modules frozen into flash as bytecode and littlefs
# (vfs.VfsLfs2) linked in. Prints the path of firmware.elf on its last line.
#
#   bash tools/board.sh                               # firmware/board/manifest.py: what a board carries
#   bash tools/board.sh tests/board/manifest.py 524288   # the board lane's test image, 512 KB heap
#
# Arguments: MANIFEST (default firmware/board/manifest.py), HEAP in bytes
# (default 143360, the port's own). Installs gcc-arm-none-eabi,
# libnewlib-arm-none-eabi and qemu-system-arm with apt when missing (as
# root). Builds are cached in build/board/, keyed on the tarball, the
# manifest, every source it can freeze and this script: a rerun with
# nothing changed prints the cached image at once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
vendor=${PILE_VENDOR:-$root/../shared/vendor}
tarball=$vendor/micropython-1c3c201149-qemu-src.tar.xz
if [ ! -f "$tarball" ]; then
  echo "board: missing $tarball (../shared/vendor/, the vendored MicroPython source)" >&2
  exit 1
fi
manifest=$(realpath "${1:-firmware/board/manifest.py}")
heap=${2:-143360}
[ -f "$manifest" ] || { echo "board: no manifest $manifest" >&2; exit 1; }

need=()
command -v arm-none-eabi-gcc >/dev/null 2>&1 || need+=(gcc-arm-none-eabi)
if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 \
   || [ "$(arm-none-eabi-gcc -print-file-name=libc.a)" = libc.a ]; then
  need+=(libnewlib-arm-none-eabi)
fi
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "board: installing ${need[*]} (apt)" >&2
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
  else
    echo "board: missing ${need[*]} (install them with apt as root)" >&2
    exit 1
  fi
fi

cache=$root/build/board
mkdir -p "$cache"
tarhash=$(sha256sum "$tarball" | cut -c1-16)
rel=$(realpath --relative-to="$root" "$manifest")
name=$(echo "${rel%.py}" | tr -c 'A-Za-z0-9_\n' -)
key=$({
  echo "$tarhash $heap $manifest"
  cat "$0"
  find firmware protocol tests/mp tests/board -type f \( -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.mk' \) \
    -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
elf=$cache/img-$name-$heap-$key.elf
if [ -f "$elf" ]; then
  echo "board: cached $elf" >&2
  echo "$elf"
  exit 0
fi

# One build at a time per checkout (the object folders are shared).
exec 9>"$cache/.lock"
flock 9
src=$cache/src-$tarhash
if [ ! -x "$src/micropython/mpy-cross/build/mpy-cross" ]; then
  tmp=$(mktemp -d "$cache/src-tmp-XXXXXX")
  echo "board: extracting $(basename "$tarball") and building mpy-cross" >&2
  tar -xJf "$tarball" -C "$tmp"
  nice make -C "$tmp/micropython/mpy-cross" -j2 >"$tmp/mpy-cross.log" 2>&1 \
    || { tail -n 20 "$tmp/mpy-cross.log" >&2; echo "board: mpy-cross build failed" >&2; exit 1; }
  rm -rf "$src"
  mv "$tmp" "$src"
fi
obj=$cache/obj-$name-$heap       # kept between builds: make rebuilds only what changed
log=$cache/build-$name-$heap.log
start=$(date +%s)
echo "board: building $name (heap $heap) into $obj" >&2
if ! nice make -C "$src/micropython/ports/qemu" -j2 BOARD=MPS2_AN385 BUILD="$obj" \
     FROZEN_MANIFEST="$manifest" MICROPY_VFS_LFS2=1 MICROPY_HEAP_SIZE="$heap" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "board: build failed (log: $log)" >&2
  exit 1
fi
# keep the last two (none yet on a first build: ls fails, which pipefail must not turn into an exit)
{ ls -t "$cache"/img-"$name"-"$heap"-*.elf 2>/dev/null || true; } | tail -n +3 | xargs -r rm -f
cp "$obj/firmware.elf" "$elf.tmp" && mv "$elf.tmp" "$elf"
echo "board: built in $(( $(date +%s) - start )) s" >&2
echo "$elf"
