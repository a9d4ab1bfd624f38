#!/usr/bin/env bash
# The GPU machines' image has libpcre2-8.so.0 but not its development files. This builds, here,
# .dev/kern-pcre2 (ignored by git): the PCRE2 header from Debian's libpcre2-dev, a linker script
# pointing at the system library, and a pkg-config file. Copy `.dev/kern-pcre2` to the GPU machine;
# scripts/gpu_check.sh and scripts/gpu_kernel_tests.sh pick it up when pkg-config finds no pcre2.
set -euo pipefail
cd "$(dirname "$0")/.."
dst=.dev/kern-pcre2
mkdir -p "$dst/include" "$dst/lib" "$dst/pc"
tmp=$(mktemp -d)
(cd "$tmp" && apt-get download libpcre2-dev >/dev/null && dpkg -x libpcre2-dev_*.deb x)
cp "$tmp"/x/usr/include/pcre2.h "$dst/include/"
echo 'INPUT(/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0)' >"$dst/lib/libpcre2-8.so"
cat >"$dst/pc/libpcre2-8.pc" <<'PC'
prefix=${pcfiledir}/..
libdir=${prefix}/lib
includedir=${prefix}/include

Name: libpcre2-8
Description: PCRE2 8-bit (header from Debian libpcre2-dev; runtime from the system)
Version: 10.42
Libs: -L${libdir} -lpcre2-8
Cflags: -I${includedir}
PC
rm -rf "$tmp"
echo "wrote $dst"
