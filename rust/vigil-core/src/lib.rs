// SPDX-License-Identifier: GPL-2.0-or-later

//! Device logic of vigil's guest-health devices, free of QEMU types.
//!
//! Everything a guest can influence is decided here, as plain functions over
//! plain integers, so that it is tested with `cargo test` on any machine:
//!
//! * [`stall`]: the vCPU stall detector's register decode and the per-vCPU
//!   countdown over a time source the QOM shell supplies (the vCPU thread's CPU
//!   time, or QEMU's virtual clock).
//! * [`pvpanic`]: the pvpanic register's bit semantics, shared by the ISA and
//!   MMIO front ends.
//!
//! The QOM shells (`rust/hw/misc/*`) only translate between QEMU and these
//! types: they read clocks, arm timers, raise interrupts and send events.

pub mod pvpanic;
pub mod stall;
