#!/usr/bin/env bash
# Cross-compile and run aarch64 libraries on an x86 Debian/Ubuntu host:
#   - gcc-aarch64-linux-gnu + libc6-dev-arm64-cross link the libraries (`qcompiler compile --target arm64*`),
#   - llvm's llvm-mca scores aarch64 kernels for a named ARM core (`qcompiler tune --estimate`),
#   - qemu-user runs them, with an arm64 Python unpacked from Debian .debs (dpkg -x, no chroot) and the
#     aarch64 wheels of apache-tvm, apache-tvm-ffi and numpy: `qcompiler run` and the tests use it.
# Usage: scripts/setup_aarch64.sh [DIR]   (default: .aarch64 in the repository; needs root or sudo for apt)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$(realpath -m "${1:-.aarch64}")"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

$SUDO dpkg --add-architecture arm64
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user llvm >/dev/null

# The arm64 Python 3.11 and the shared libraries it and TVM load.
DEBS="libc6 libgcc-s1 libstdc++6 libgomp1 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib zlib1g
      libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8
      libcrypt1 libdb5.3 libnsl2 libtirpc3"
rm -rf "$DIR.tmp" && mkdir -p "$DIR.tmp/debs" "$DIR.tmp/root"
(cd "$DIR.tmp/debs" && apt-get download $(for d in $DEBS; do echo "$d:arm64"; done) 2>/dev/null)
for deb in "$DIR.tmp"/debs/*.deb; do dpkg -x "$deb" "$DIR.tmp/root"; done
rm -rf "$DIR.tmp/debs"

# The aarch64 wheels, pinned as in pyproject.toml. Any pip will do: this one's, or a throwaway venv's.
PIP="python3 -m pip"
if ! python3 -m pip --version >/dev/null 2>&1; then python3 -m venv "$DIR.tmp/venv" && PIP="$DIR.tmp/venv/bin/pip"; fi
$PIP install --quiet --target "$DIR.tmp/site" --only-binary=:all: --no-deps --implementation cp \
    --python-version 3.11 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_28_aarch64 \
    apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 typing_extensions

cat > "$DIR.tmp/python" <<WRAPPER
#!/usr/bin/env bash
# The arm64 Python under qemu-aarch64, with the aarch64 wheels and this repository's qcompiler importable.
here="\$(dirname "\$(realpath "\$0")")"
export PYTHONPATH="\$here/site:$(pwd)\${QCOMPILER_AARCH64_PYTHONPATH:+:\$QCOMPILER_AARCH64_PYTHONPATH}"
export TVM_USE_RUNTIME_LIB=1 PYTHONNOUSERSITE=1
exec qemu-aarch64 -L "\$here/root" "\$here/root/usr/bin/python3.11" "\$@"
WRAPPER
chmod +x "$DIR.tmp/python"
rm -rf "$DIR.tmp/venv" "$DIR" && mv "$DIR.tmp" "$DIR"
"$DIR/python" -c "import platform, numpy, tvm.runtime; print('aarch64 environment ready in $DIR:', platform.machine(), 'numpy', numpy.__version__)"
