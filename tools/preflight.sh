#!/usr/bin/env bash
# Preflight of `make test` / `make gui` / `.ci/run`: make sure the system packages that the Qt
# (napari) GUI tests need are present -- Xvfb, xauth and the Qt6 xcb runtime libraries.
#
# * Quiet and exit 0 when everything is present (or when not on Linux, or SPURIG_NO_GUI=1).
# * Otherwise installs the missing Debian/Ubuntu packages with apt-get (through sudo when not root).
# * When that is impossible it prints ONE line naming the missing packages and how to install
#   them (or how to run without the GUI tests) and exits 2.
#
# Usage: tools/preflight.sh [--check]   (--check: report only, never install)
set -uo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

[ "${SPURIG_NO_GUI:-0}" = "1" ] && exit 0
[ "$(uname -s)" = "Linux" ] || exit 0   # macOS/Windows Qt needs no X server

# Every package a bare image may lack; the Qt xcb platform plugin loads several libxcb-* at once.
all_pkgs=(xvfb xauth libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
          libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libegl1 libgl1
          libfontconfig1 libdbus-1-3 libglib2.0-0)

missing() {
    # Print the packages whose command or library is absent, space separated.
    local out=() ldc lib pkg
    command -v Xvfb >/dev/null 2>&1 || out+=(xvfb)
    command -v xauth >/dev/null 2>&1 || out+=(xauth)
    ldc=$(command -v ldconfig || echo /sbin/ldconfig)
    if [ -x "$ldc" ]; then
        local cache
        cache=$("$ldc" -p 2>/dev/null)
        for pair in libxkbcommon-x11.so.0:libxkbcommon-x11-0 libxcb-cursor.so.0:libxcb-cursor0 \
            libxcb-icccm.so.4:libxcb-icccm4 libxcb-image.so.0:libxcb-image0 \
            libxcb-keysyms.so.1:libxcb-keysyms1 libxcb-randr.so.0:libxcb-randr0 \
            libxcb-render-util.so.0:libxcb-render-util0 libxcb-shape.so.0:libxcb-shape0 \
            libxcb-xinerama.so.0:libxcb-xinerama0 libxcb-xkb.so.1:libxcb-xkb1 libEGL.so.1:libegl1 \
            libGL.so.1:libgl1 libfontconfig.so.1:libfontconfig1 libdbus-1.so.3:libdbus-1-3 \
            libglib-2.0.so.0:libglib2.0-0; do
            lib=${pair%%:*}
            pkg=${pair##*:}
            grep -q "$lib" <<<"$cache" || out+=("$pkg")
        done
    fi
    echo "${out[*]:-}"
}

need=$(missing)
[ -z "$need" ] && exit 0

give_up() {
    # $1: why installing was impossible (empty with --check).
    local why=${1:+ ($1)}
    if [ -n "${DISPLAY:-}" ] && [[ "$need" != *lib* ]]; then
        echo "spurig preflight: note: $need not installed$why; the GUI tests will use DISPLAY=$DISPLAY" >&2
        exit 0
    fi
    echo "spurig preflight: error: missing system packages for the GUI tests: $need$why; install them with 'sudo apt-get install -y $need', or run without the GUI tests: SPURIG_NO_GUI=1 make test" >&2
    exit 2
}

[ "$check_only" = 1 ] && give_up ""
command -v apt-get >/dev/null 2>&1 || give_up "no apt-get on this system"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        give_up "not root and no sudo"
    fi
    # Never hang on a password prompt in a non-interactive run.
    if [ -t 0 ]; then SUDO=(sudo); else SUDO=(sudo -n); fi
fi

log=$(mktemp "${TMPDIR:-/tmp}/spurig-preflight.XXXXXX.log")
echo "spurig preflight: installing $need with ${SUDO[*]:+${SUDO[*]} }apt-get (log: $log)" >&2
# Install the whole set (not just the detected ones): the Qt plugin needs all of them together.
if ! { "${SUDO[@]}" apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
           "${all_pkgs[@]}"; } >"$log" 2>&1; then
    give_up "apt-get failed, see $log"
fi
need=$(missing)
[ -z "$need" ] || give_up "still missing after apt-get, see $log"
rm -f "$log"
exit 0
