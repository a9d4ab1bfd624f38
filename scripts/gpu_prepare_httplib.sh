#!/usr/bin/env bash
# The GPU machines' image has no cpp-httplib (uniattn-serve's HTTP library). This builds, here,
# .dev/kern-httplib (ignored by git): Debian's httplib.h and libcpp-httplib.so with the libraries
# it needs that the image may lack (brotli), and a pkg-config file. Carry `.dev/kern-httplib` to
# the GPU machine and put its pc/ on PKG_CONFIG_PATH and its lib/ on LD_LIBRARY_PATH
# (scripts/serve_bench_gpu.sh does both when pkg-config finds no cpp-httplib).
set -euo pipefail
cd "$(dirname "$0")/.."
dst=.dev/kern-httplib
mkdir -p "$dst/include" "$dst/lib" "$dst/pc"
cp /usr/include/httplib.h "$dst/include/"
lib=/usr/lib/x86_64-linux-gnu
cp -L "$lib/libcpp-httplib.so.0.11" "$dst/lib/"
ln -sf libcpp-httplib.so.0.11 "$dst/lib/libcpp-httplib.so"
for so in libbrotlicommon.so.1 libbrotlidec.so.1 libbrotlienc.so.1; do cp -L "$lib/$so" "$dst/lib/"; done
# httplib.h includes brotli's headers (CPPHTTPLIB_BROTLI_SUPPORT), which the image lacks too.
tmp=$(mktemp -d)
(cd "$tmp" && apt-get download libbrotli-dev >/dev/null 2>&1 && dpkg -x libbrotli-dev_*.deb x)
cp -r "$tmp"/x/usr/include/brotli "$dst/include/"
rm -rf "$tmp"
cat >"$dst/pc/cpp-httplib.pc" <<'PC'
prefix=${pcfiledir}/..
libdir=${prefix}/lib
includedir=${prefix}/include

Name: cpp-httplib
Description: cpp-httplib 0.11.4 (Debian's header and library, carried)
Version: 0.11.4
Libs: -L${libdir} -lcpp-httplib -Wl,-rpath,${libdir}
Cflags: -I${includedir} -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
PC
echo "wrote $dst ($(du -sh "$dst" | cut -f1))"
