// SPDX-License-Identifier: GPL-2.0-or-later

//! `pvpanic-pci`: the pvpanic register in BAR 0 (2 bytes, 32-bit memory) of
//! a conventional PCI function, Red Hat's 1b36:0011, class "system
//! peripheral, other" (0x0880), revision 1. Linux's `pvpanic-pci` driver.
//!
//! Replaces QEMU's C `hw/misc/pvpanic-pci.c` when QEMU is built with Rust
//! (patches/0005): same type name, ids, BAR, `events` property and default
//! (all three events), and migration stream (`pvpanic-pci`, version 1: the
//! PCI device state, `VMSTATE_PCI_DEVICE`, and nothing else), so a C-built
//! source migrates to a Rust-built destination and back.

use std::ffi::CStr;

use common::uninit_field_mut;
use hwcore::{bindings::DeviceCategory, DeviceImpl, DeviceState, ResettablePhasesImpl};
use migration::{vmstate_fields, vmstate_of, VMStateDescription, VMStateDescriptionBuilder};
use pci::{BarType, PCIDevice, PCIDeviceClass, PCIDeviceImpl, PCIDeviceMethods};
use pvpanic::{PvPanicDevice, PvPanicRegister};
use qom::{prelude::*, ObjectImpl, ParentField, ParentInit};
use system::MemoryRegion;
use vigil_core::pvpanic::ALL;

pub const TYPE_PVPANIC_PCI: &CStr = c"pvpanic-pci";

/// Size of BAR 0 (as QEMU's C device; a power of two, as BARs must be).
pub const PVPANIC_PCI_BAR_SIZE: u64 = 2;

#[repr(C)]
#[derive(hwcore::Device)]
/// pvpanic-pci device state.
pub struct PvPanicPci {
    /// Named as in C (`PVPanicPCIState.dev`): the vmstate field name.
    dev: ParentField<PCIDevice>,
    iomem: MemoryRegion,
    /// Events advertised to the guest (C's default: all three).
    #[property(rename = "events", default = ALL)]
    events: u8,
    reg: PvPanicRegister,
}

qom_isa!(PvPanicPci: PCIDevice, DeviceState, Object);

// SAFETY: register_pci_device! below registers PvPanicPci under this name.
unsafe impl ObjectType for PvPanicPci {
    type Class = PCIDeviceClass;
    const TYPE_NAME: &'static CStr = TYPE_PVPANIC_PCI;
}

impl ObjectImpl for PvPanicPci {
    type ParentType = PCIDevice;

    const INSTANCE_INIT: Option<unsafe fn(ParentInit<Self>)> = Some(Self::init);
    const CLASS_INIT: fn(&mut Self::Class) = Self::class_init;
}

pci::register_pci_device!(PvPanicPci, pci::CONVENTIONAL_PCI_DEVICE);

/// C's `vmstate_pvpanic_pci`, field for field.
const VMSTATE_PVPANIC_PCI: VMStateDescription<PvPanicPci> =
    VMStateDescriptionBuilder::<PvPanicPci>::new()
        .name(c"pvpanic-pci")
        .version_id(1)
        .minimum_version_id(1)
        .fields(vmstate_fields! {
            vmstate_of!(PvPanicPci, dev),
        })
        .build();

impl DeviceImpl for PvPanicPci {
    const VMSTATE: Option<VMStateDescription<Self>> = Some(VMSTATE_PVPANIC_PCI);
}

impl ResettablePhasesImpl for PvPanicPci {}

impl PCIDeviceImpl for PvPanicPci {
    const VENDOR_ID: u16 = pci::bindings::PCI_VENDOR_ID_REDHAT as u16;
    const DEVICE_ID: u16 = pci::bindings::PCI_DEVICE_ID_REDHAT_PVPANIC as u16;
    const REVISION: u8 = 1;
    const CLASS_ID: u16 = pci::bindings::PCI_CLASS_SYSTEM_OTHER as u16;

    const REALIZE: Option<fn(&Self) -> util::Result<()>> = Some(Self::realize);
}

impl PvPanicPci {
    fn class_init(klass: &mut PCIDeviceClass) {
        klass.class_init::<Self>();
        // As C's: no description, category "Misc devices".
        let dc = &mut klass.parent_class;
        dc.categories[0] |= 1 << DeviceCategory::DEVICE_CATEGORY_MISC as u32;
    }

    /// # Safety
    ///
    /// Called once by QOM on a zeroed, correctly sized instance.
    unsafe fn init(mut this: ParentInit<Self>) {
        pvpanic::init_io(&mut uninit_field_mut!(*this, iomem), PVPANIC_PCI_BAR_SIZE);
    }

    fn realize(&self) -> util::Result<()> {
        pvpanic::check_events(Self::NAME, self.events);
        self.register_bar(0, BarType::Memory32, &self.iomem);
        Ok(())
    }
}

impl PvPanicDevice for PvPanicPci {
    const NAME: &'static str = "pvpanic-pci";

    fn events(&self) -> u8 {
        self.events
    }

    fn register(&self) -> &PvPanicRegister {
        &self.reg
    }
}
