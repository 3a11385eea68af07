// SPDX-License-Identifier: GPL-2.0-or-later

//! Safe wrappers of the C functions the ISA pvpanic calls (bindgen output
//! in `bindings`).

use std::ffi::CStr;

use common::Opaque;
use hwcore::{DeviceClass, DeviceState};
use qom::{prelude::*, ObjectType};
use system::MemoryRegion;

use crate::bindings;

/// `ISADevice` from `hw/isa/isa.h`, the parent of ISA devices.
#[repr(transparent)]
#[derive(Debug, common::Wrapper)]
pub struct ISADevice(Opaque<bindings::ISADevice>);

// SAFETY: like DeviceState, only used under the BQL.
unsafe impl Send for ISADevice {}
// SAFETY: as above.
unsafe impl Sync for ISADevice {}

// SAFETY: the C type "isa-device" has the layout of bindings::ISADevice and
// DeviceClass as its class (OBJECT_DECLARE_SIMPLE_TYPE).
unsafe impl ObjectType for ISADevice {
    type Class = DeviceClass;
    const TYPE_NAME: &'static CStr = c"isa-device";
}
qom_isa!(ISADevice: DeviceState, Object);

/// The machine's `fw_cfg` device.
pub struct FwCfg(*mut bindings::FWCfgState);

impl FwCfg {
    pub fn find() -> Option<FwCfg> {
        // SAFETY: no arguments; returns NULL on machines without fw_cfg.
        let p = unsafe { bindings::fw_cfg_find() };
        (!p.is_null()).then_some(FwCfg(p))
    }

    /// Tells the firmware where the port is: file `etc/pvpanic-port`, le16.
    pub fn add_pvpanic_port(&self, port: u16) {
        // fw_cfg keeps the data for the life of the machine, as in C.
        let data: &'static mut [u8; 2] = Box::leak(Box::new(port.to_le_bytes()));
        // SAFETY: self.0 is the live fw_cfg device; the name is copied and
        // the data outlives it.
        unsafe {
            bindings::fw_cfg_add_file(
                self.0,
                c"etc/pvpanic-port".as_ptr(),
                data.as_mut_ptr().cast(),
                data.len(),
            );
        }
    }
}

/// Maps `io` at `port` in the ISA I/O space.
pub fn isa_register_ioport(dev: &ISADevice, io: &MemoryRegion, port: u16) {
    // SAFETY: both are live, initialized objects owned by the device.
    unsafe { bindings::isa_register_ioport(dev.as_mut_ptr(), io.as_mut_ptr(), port) }
}

/// Installs the ACPI AML builder (`PEVT`, `QEMU0001`): the very function
/// QEMU's C pvpanic uses, which reads the port from the `ioport` property.
pub fn install_acpi_aml(klass: &mut DeviceClass) {
    // SAFETY: klass is the class being initialized; its type lists the
    // acpi-dev-aml-interface, so the C side finds the interface's vtable.
    unsafe { bindings::pvpanic_isa_class_init_aml(std::ptr::from_mut(klass).cast()) }
}
