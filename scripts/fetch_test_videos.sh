#!/usr/bin/env bash
# Fetch the real test videos (OpenCV's sample clips from Debian's opencv-doc package) into DEST.
#
#   scripts/fetch_test_videos.sh DEST
#
# Idempotent: when DEST already holds every video it does nothing. Otherwise it runs
# `apt-get download opencv-doc` (and `apt-get update` first only if that download fails), unpacks
# the package with `dpkg -x` into a temporary folder and copies examples/data/*.avi into DEST:
# Megamind.avi, Megamind_bugy.avi (the same clip with visible coding damage), tree.avi (a
# variable-rate clip: 68 stored frames over 444 frame slots) and vtest.avi. Nothing is installed.
# The tests find them through $UNIADAFOCUS_TEST_VIDEOS (default ~/.cache/uniadafocus/test-videos).
set -euo pipefail

dest=${1:?usage: $0 DEST}
videos=(Megamind.avi Megamind_bugy.avi tree.avi vtest.avi)

have_all() {
  local f
  for f in "${videos[@]}"; do [ -s "$dest/$f" ] || return 1; done
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else "$@"
  fi
}

if have_all; then
  echo "test videos already present in $dest"
  exit 0
fi
for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool not found (a Debian/Ubuntu system is needed)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"   # apt's sandbox user must be able to write the .deb here
cd "$work"
if ! apt-get download opencv-doc >/dev/null 2>&1; then
  echo "apt-get download failed; running apt-get update first" >&2
  as_root apt-get update -qq
  apt-get download opencv-doc
fi
dpkg -x opencv-doc_*.deb unpacked
data=$(find unpacked -type d -path '*/examples/data' | head -n 1)
[ -n "$data" ] || { echo "error: examples/data not found in opencv-doc" >&2; exit 1; }

mkdir -p "$dest"
for f in "$data"/*.avi; do
  name=$(basename "$f")
  cp "$f" "$dest/.$name.part"
  mv "$dest/.$name.part" "$dest/$name"
done
have_all || { echo "error: expected ${videos[*]} in $data" >&2; exit 1; }
echo "copied $(ls "$data"/*.avi | wc -l) test videos to $dest"
