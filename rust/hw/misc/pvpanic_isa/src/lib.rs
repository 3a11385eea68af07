// SPDX-License-Identifier: GPL-2.0-or-later

//! `pvpanic`: the ISA pvpanic device, a drop-in replacement for QEMU's C
//! `hw/misc/pvpanic-isa.c` when QEMU is built with Rust.
//!
//! Same QOM type name, properties (`ioport`, default 0x505; `events`, default
//! all three), `fw_cfg` file `etc/pvpanic-port`, ACPI device (`PEVT`, `_HID
//! "QEMU0001"`, the C device's own AML builder, `hw/misc/pvpanic-isa-aml.c`)
//! and guest-visible semantics (`vigil_core::pvpanic`). Like the C device it
//! has no migration state: `events` and `ioport` are configuration.

mod bindings;
mod ffi;

use std::ffi::CStr;

use common::uninit_field_mut;
pub use ffi::ISADevice;
use hwcore::{
    bindings::DeviceCategory, DeviceClass, DeviceImpl, DeviceState, ResettablePhasesImpl,
};
use pvpanic::{PvPanicDevice, PvPanicRegister};
use qom::{
    bindings::{InterfaceInfo, TypeInfo},
    prelude::*,
    ObjectImpl, ParentField, ParentInit,
};
use system::MemoryRegion;
use vigil_core::pvpanic::ALL;

pub const TYPE_PVPANIC_ISA: &CStr = c"pvpanic";

#[repr(C)]
#[derive(hwcore::Device)]
/// ISA pvpanic device state.
pub struct PvPanicIsa {
    parent_obj: ParentField<ISADevice>,
    iomem: MemoryRegion,
    #[property(rename = "ioport", default = 0x505)]
    ioport: u16,
    #[property(rename = "events", default = ALL)]
    events: u8,
    reg: PvPanicRegister,
}

qom_isa!(PvPanicIsa: ISADevice, DeviceState, Object);

// SAFETY: TYPE_INFO below registers PvPanicIsa under this name.
unsafe impl ObjectType for PvPanicIsa {
    type Class = DeviceClass;
    const TYPE_NAME: &'static CStr = TYPE_PVPANIC_ISA;
}

impl ObjectImpl for PvPanicIsa {
    type ParentType = ISADevice;

    const INSTANCE_INIT: Option<unsafe fn(ParentInit<Self>)> = Some(Self::init);
    const CLASS_INIT: fn(&mut Self::Class) = Self::class_init;
}

impl DeviceImpl for PvPanicIsa {
    const REALIZE: Option<fn(&Self) -> util::Result<()>> = Some(Self::realize);
}

impl ResettablePhasesImpl for PvPanicIsa {}

/// The type implements the ACPI AML interface, which QOM types written in
/// Rust cannot declare yet: register it by hand instead of with
/// `#[derive(qom::Object)]`.
const INTERFACES: &[InterfaceInfo] = &[
    InterfaceInfo {
        type_: c"acpi-dev-aml-interface".as_ptr(),
    },
    InterfaceInfo {
        type_: std::ptr::null(),
    },
];
const TYPE_INFO: TypeInfo = TypeInfo {
    interfaces: INTERFACES.as_ptr(),
    ..<PvPanicIsa as ObjectImpl>::TYPE_INFO
};
util::module_init! {
    // SAFETY: TYPE_INFO is a static TypeInfo, registered once at start-up.
    MODULE_INIT_QOM => unsafe {
        qom::type_register_static(&TYPE_INFO);
    }
}

impl PvPanicIsa {
    fn class_init(klass: &mut DeviceClass) {
        klass.class_init::<Self>();
        klass.categories[0] |= 1 << DeviceCategory::DEVICE_CATEGORY_MISC as u32;
        ffi::install_acpi_aml(klass);
    }

    /// # Safety
    ///
    /// Called once by QOM on a zeroed, correctly sized instance.
    unsafe fn init(mut this: ParentInit<Self>) {
        pvpanic::init_io(&mut uninit_field_mut!(*this, iomem), 1);
    }

    fn realize(&self) -> util::Result<()> {
        pvpanic::check_events(Self::NAME, self.events);
        // As the C device: without fw_cfg (no firmware to tell), no port.
        let Some(fw_cfg) = ffi::FwCfg::find() else {
            return Ok(());
        };
        fw_cfg.add_pvpanic_port(self.ioport);
        ffi::isa_register_ioport(self.upcast(), &self.iomem, self.ioport);
        Ok(())
    }
}

impl PvPanicDevice for PvPanicIsa {
    const NAME: &'static str = "pvpanic";

    fn events(&self) -> u8 {
        self.events
    }

    fn register(&self) -> &PvPanicRegister {
        &self.reg
    }
}
