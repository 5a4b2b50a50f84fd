#!/usr/bin/env bash
# Build and run Hexagon libraries on an x86 Debian/Ubuntu host, without the Hexagon SDK:
#   - clang-14 compiles the generated C driver for Hexagon (`clang --target=hexagon`),
#   - ld.lld-14 links it with the HVX kernels TVM generated (and links model_hvx.so),
#   - llvm-14's llvm-objdump disassembles the HVX code (the tests count its vector instructions),
#   - qemu-user's qemu-hexagon runs the test program (Linux user mode; correctness, not timing).
# `qcompiler compile --target hexagon-v68|hexagon-v73` needs ld.lld; `qcompiler run` and the tests need all three.
# Usage: scripts/setup_hexagon.sh   (needs root or sudo for apt)
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends clang-14 lld-14 llvm-14 qemu-user >/dev/null
for tool in clang-14 ld.lld-14 qemu-hexagon; do
  command -v "$tool" >/dev/null || { echo "setup_hexagon.sh: $tool is missing after apt-get install" >&2; exit 1; }
done
echo "Hexagon tools ready: $(clang-14 --version | head -1); $(qemu-hexagon --version | head -1)"
