// SPDX-License-Identifier: GPL-2.0-or-later

//! What every pvpanic front end (ISA `pvpanic`, `pvpanic-mmio`,
//! `pvpanic-pci`) shares, as QEMU's C `hw/misc/pvpanic.c` does for the C
//! devices: one `MemoryRegionOps` with one read and one write for all of
//! them ([`PvPanicDevice`], [`init_io`]), on top of `vigil_core::pvpanic`,
//! and the calls into QEMU's run-state code that raise `GUEST_PANICKED`,
//! `GUEST_CRASHLOADED` and `GUEST_PVSHUTDOWN` exactly as the C device does.

use std::marker::PhantomData;

use bql::BqlCell;
use common::uninit::MaybeUninitField;
use qom::prelude::*;
use system::{hwaddr, MemoryRegion, MemoryRegionOps, MemoryRegionOpsBuilder};
use util::{log::Log, log_mask_ln};
use vigil_core::pvpanic::{decode_write, events_warning, Event};

::trace::include_trace!("vigil");

mod bindings;

/// Safe wrappers of the C calls (all of this crate's `unsafe` is here).
mod ffi {
    use std::{ffi::CString, ptr};

    use crate::bindings;

    /// Prints `msg` as a QEMU warning (`warn_report`).
    pub fn warn(msg: &str) {
        let msg = CString::new(msg).unwrap_or_default();
        // SAFETY: a "%s" format with one NUL-terminated string argument.
        unsafe { bindings::warn_report(c"%s".as_ptr(), msg.as_ptr()) }
    }

    /// `GUEST_PANICKED` and the panic action, without panic information.
    pub fn guest_panicked() {
        // SAFETY: BQL held (MMIO/PIO handler), as the C device calls it; NULL
        // is the "no information" argument.
        unsafe { bindings::qemu_system_guest_panicked(ptr::null_mut()) }
    }

    /// `GUEST_CRASHLOADED`, without panic information.
    pub fn guest_crashloaded() {
        // SAFETY: as for guest_panicked.
        unsafe { bindings::qemu_system_guest_crashloaded(ptr::null_mut()) }
    }

    /// `GUEST_PVSHUTDOWN` and a guest-requested shutdown.
    pub fn guest_pvshutdown() {
        // SAFETY: BQL held, no arguments.
        unsafe { bindings::qemu_system_guest_pvshutdown() }
    }
}

/// Realize-time check of a front end's `events` property: like the C
/// devices, any value is accepted; unknown bits get a warning on stderr.
pub fn check_events(device: &str, events: u8) {
    if let Some(w) = events_warning(events) {
        ffi::warn(&format!("{device}: {w}"));
    }
}

/// The register state a front end keeps: the advertised events (its
/// `events` property) and whether unknown bits were already logged.
#[derive(Debug, Default)]
pub struct PvPanicRegister {
    /// Set once unknown bits were logged: like the C device, log only once.
    logged_unknown: BqlCell<bool>,
}

impl PvPanicRegister {
    /// A guest read: the events the device advertises.
    #[must_use]
    pub fn read(events: u8) -> u64 {
        u64::from(events)
    }

    /// A guest write of `value` (one byte: the memory core splits wider ones).
    pub fn write(&self, device: &str, value: u64) {
        let w = decode_write(value);
        trace::trace_pvpanic_write(value);
        if w.unknown != 0 && !self.logged_unknown.replace(true) {
            log_mask_ln!(Log::GuestError, "{device}: unknown event {value:#x}");
        }
        match w.event {
            Some(Event::Panicked) => ffi::guest_panicked(),
            Some(Event::CrashLoaded) => ffi::guest_crashloaded(),
            Some(Event::Shutdown) => ffi::guest_pvshutdown(),
            None => {}
        }
    }
}

/// A pvpanic front end: a device whose `iomem` region holds the pvpanic
/// register (every byte of it decodes the same, as in C).
pub trait PvPanicDevice: IsA<Object> + Sync + 'static {
    /// The QOM type name, for warnings and guest-error logs.
    const NAME: &'static str;

    /// The events the device advertises (its `events` property).
    fn events(&self) -> u8;

    /// Its register state.
    fn register(&self) -> &PvPanicRegister;
}

/// The one `MemoryRegionOps` of all front ends: as QEMU's C `pvpanic_ops`,
/// a 1-byte implementation (wider guest accesses are split by the memory
/// core), native endian.
struct Ops<T>(PhantomData<T>);

impl<T: PvPanicDevice> Ops<T> {
    const OPS: MemoryRegionOps<T> = MemoryRegionOpsBuilder::<T>::new()
        .read(&read::<T>)
        .write(&write::<T>)
        .native_endian()
        .impl_sizes(1, 1)
        .build();
}

fn read<T: PvPanicDevice>(dev: &T, _offset: hwaddr, _size: u32) -> u64 {
    PvPanicRegister::read(dev.events())
}

fn write<T: PvPanicDevice>(dev: &T, _offset: hwaddr, value: u64, _size: u32) {
    dev.register().write(T::NAME, value);
}

/// Initializes `iomem`, from the device's `instance_init`, as a `size`-byte
/// pvpanic region (named "pvpanic", as C's) owned by the device.
pub fn init_io<T: PvPanicDevice>(iomem: &mut MaybeUninitField<'_, T, MemoryRegion>, size: u64) {
    MemoryRegion::init_io(iomem, &Ops::<T>::OPS, "pvpanic", size);
}
