// SPDX-License-Identifier: GPL-2.0-or-later

//! `pvpanic-mmio`: the pvpanic register on a 2-byte sysbus MMIO region.
//!
//! Replaces QEMU's C `pvpanic-mmio` when QEMU is built with Rust (same type
//! name, `events` default and region, so the `vmapple` board keeps working)
//! and, unlike it, can be created with `-device pvpanic-mmio` on the Arm
//! `virt` machine, which maps it on its platform bus and describes it to the
//! guest with a `qemu,pvpanic-mmio` device tree node.

use std::ffi::CStr;

use common::uninit_field_mut;
use hwcore::{
    bindings::DeviceCategory, DeviceImpl, DeviceState, ResettablePhasesImpl, SysBusDevice,
    SysBusDeviceImpl, SysBusDeviceMethods,
};
use pvpanic::{PvPanicDevice, PvPanicRegister};
use qom::{prelude::*, ObjectImpl, ParentField, ParentInit};
use system::MemoryRegion;
use vigil_core::pvpanic::{CRASH_LOADED, PANICKED};

pub const TYPE_PVPANIC_MMIO: &CStr = c"pvpanic-mmio";

/// Size of the MMIO region (as QEMU's C device, and Linux's binding).
pub const PVPANIC_MMIO_SIZE: u64 = 2;

/// The C device's default `events`: no shutdown.
pub const DEFAULT_EVENTS: u8 = PANICKED | CRASH_LOADED;

#[repr(C)]
#[derive(qom::Object, hwcore::Device)]
/// pvpanic-mmio device state.
pub struct PvPanicMmio {
    parent_obj: ParentField<SysBusDevice>,
    iomem: MemoryRegion,
    /// Events advertised to the guest (the C device's default: no shutdown).
    #[property(rename = "events", default = DEFAULT_EVENTS)]
    events: u8,
    reg: PvPanicRegister,
}

qom_isa!(PvPanicMmio: SysBusDevice, DeviceState, Object);

// SAFETY: repr(C) with the SysBusDevice parent first; the class is the
// parent's (no class fields of its own).
unsafe impl ObjectType for PvPanicMmio {
    type Class = <SysBusDevice as ObjectType>::Class;
    const TYPE_NAME: &'static CStr = TYPE_PVPANIC_MMIO;
}

impl ObjectImpl for PvPanicMmio {
    type ParentType = SysBusDevice;

    const INSTANCE_INIT: Option<unsafe fn(ParentInit<Self>)> = Some(Self::init);
    const INSTANCE_POST_INIT: Option<fn(&Self)> = Some(Self::post_init);
    const CLASS_INIT: fn(&mut Self::Class) = Self::class_init;
}

impl DeviceImpl for PvPanicMmio {
    const REALIZE: Option<fn(&Self) -> util::Result<()>> = Some(Self::realize);
}

impl ResettablePhasesImpl for PvPanicMmio {}
impl SysBusDeviceImpl for PvPanicMmio {}

impl PvPanicMmio {
    fn class_init(klass: &mut <Self as ObjectType>::Class) {
        klass.class_init::<Self>();
        let dc = &mut klass.parent_class;
        // Boards that allow dynamic sysbus devices (arm virt) map it.
        dc.user_creatable = true;
        dc.desc = c"pvpanic on MMIO (Linux qemu,pvpanic-mmio)".as_ptr();
        dc.categories[0] |= 1 << DeviceCategory::DEVICE_CATEGORY_MISC as u32;
    }

    /// # Safety
    ///
    /// Called once by QOM on a zeroed, correctly sized instance.
    unsafe fn init(mut this: ParentInit<Self>) {
        pvpanic::init_io(&mut uninit_field_mut!(*this, iomem), PVPANIC_MMIO_SIZE);
    }

    fn post_init(&self) {
        // Before realize: vmapple maps the region before realizing.
        self.init_mmio(&self.iomem);
    }

    fn realize(&self) -> util::Result<()> {
        pvpanic::check_events(Self::NAME, self.events);
        Ok(())
    }
}

impl PvPanicDevice for PvPanicMmio {
    const NAME: &'static str = "pvpanic-mmio";

    fn events(&self) -> u8 {
        self.events
    }

    fn register(&self) -> &PvPanicRegister {
        &self.reg
    }
}
