// SPDX-License-Identifier: GPL-2.0-or-later

//! vCPU stall detector, guest-compatible with Linux's
//! `drivers/misc/vcpu_stall_detector.c` (DT `qemu,vcpu-stall-detector`).
//!
//! The register and countdown logic lives in `vigil_core::stall`; this
//! crate is the QOM shell around it: MMIO, per-vCPU time sources and host
//! timers, the per-CPU interrupt outputs, the `VCPU_STALL` event, the
//! watchdog action, reset and migration.
//!
//! See docs/system/devices/vcpu-stall-detector.rst and
//! docs/specs/vcpu-stall-detector.rst.

mod bindings;
mod device;
mod ffi;

pub const TYPE_VCPU_STALL_DETECTOR: &::std::ffi::CStr = c"vcpu-stall-detector";
