#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Benchmarks of vcpu-stall-detector on aarch64 -M virt (TCG) with the
# bare-metal guest in tests/guest/stall-guest/ (bash, python3; QMP through tests/vigilqmp.py).
# Prints numbers with an explanation of each; no pass/fail assertions.
#
#   1. healthy guest cost: the same healthy 2-vCPU guest with and without
#      the device (guest mode nodev: same loops, no device access): QEMU's
#      CPU time, main-loop context switches, device timer expiries.
#   2. cost of one pet: N LOAD_CNT writes vs N CURRENT_CNT writes (read-only:
#      a no-op through the same MMIO path) vs N writes to a PL011 register,
#      timed in the guest (CNTVCT) and on the host, for clock=vcpu-runtime
#      and clock=virtual.
#   3. detection latency: K stalls of CPU 1 per clock, from the guest's
#      "stop petting" line to the VCPU_STALL warning.
#
# The host load matters for 1 and 3 (the guest busy-waits on every vCPU):
# the load average is printed with the numbers.
#
# Environment (defaults: about 2-3 minutes in all):
#   QEMU_AARCH64        QEMU binary (default ~/.cache/vigil/build/qemu-system-aarch64)
#   STALL_GUEST_BUILD   where the guest is built (default ~/.cache/vigil/stall-guest)
#   BENCH_ONLY          comma-separated subset of healthy,pet,latency (default all)
#   BENCH_HEALTHY_S     seconds measured per healthy run (default 20)
#   BENCH_HEALTHY_T     budget T of the healthy guest, s (default 2: a pet per second per CPU)
#   BENCH_HEALTHY_REPS  with/without pairs (default 2)
#   BENCH_PET_N         writes per phase (default 200000)
#   BENCH_PET_ROUNDS    rounds of the three phases (default 5)
#   BENCH_LAT_K         stall runs per clock (default 5)
#   BENCH_LAT_T         budget T of the latency runs, s (default 2)
#   BENCH_LAT_P         CPU 1's pets before it stalls (default 1)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
QEMU=${QEMU_AARCH64:-$HOME/.cache/vigil/build/qemu-system-aarch64}
GUEST_BUILD=${STALL_GUEST_BUILD:-$HOME/.cache/vigil/stall-guest}

"$QEMU" --version >/dev/null 2>&1 || { echo "QEMU not usable: $QEMU" >&2; exit 1; }
make -s -C "$root/tests/guest/stall-guest" O="$GUEST_BUILD" >&2

BENCH_QEMU=$QEMU BENCH_ELF=$GUEST_BUILD/stall-guest.elf \
    exec python3 "$here/stall_detector_bench.py"
