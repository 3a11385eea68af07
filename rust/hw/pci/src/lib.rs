// SPDX-License-Identifier: GPL-2.0-or-later

//! Bindings to write PCI devices in Rust: the counterpart for
//! `hw/pci/pci_device.h` of what `hwcore`'s `sysbus` module is for sysbus.
//!
//! What a simple endpoint needs, and no more yet:
//!
//! * [`PCIDevice`], the QOM parent type, usable as `ParentField<PCIDevice>`
//!   and, in a `VMStateDescription`, as the C `VMSTATE_PCI_DEVICE` field
//!   (`vmstate_of!(MyState, parent_field)`);
//! * [`PCIDeviceImpl`]: vendor, device, revision, class and subsystem ids,
//!   `realize` and `exit`, filled into `PCIDeviceClass` by
//!   [`PCIDeviceClass::class_init`];
//! * [`PCIDeviceMethods`]: a BAR from a `MemoryRegion`
//!   ([`register_bar`](PCIDeviceMethods::register_bar)), where the guest mapped
//!   it, and the `INTx` pin;
//! * [`register_pci_device!`](crate::register_pci_device): QOM registration
//!   with the PCI interfaces QEMU requires of every PCI device type.
//!
//! Not yet: MSI/MSI-X, capabilities, config space hooks (`config_read`,
//! `config_write`), DMA through the bus master address space, option ROMs,
//! PCI Express and bridges.
//!
//! A device:
//!
//! ```ignore
//! #[repr(C)]
//! #[derive(hwcore::Device)]
//! pub struct MyPci {
//!     dev: ParentField<PCIDevice>,
//!     bar: MemoryRegion,
//! }
//! qom_isa!(MyPci: PCIDevice, DeviceState, Object);
//! impl ObjectImpl for MyPci {
//!     type ParentType = PCIDevice;
//!     const CLASS_INIT: fn(&mut PCIDeviceClass) = PCIDeviceClass::class_init::<Self>;
//!     // ...
//! }
//! impl PCIDeviceImpl for MyPci {
//!     const VENDOR_ID: u16 = 0x1b36;
//!     const DEVICE_ID: u16 = 0x0042;
//!     const CLASS_ID: u16 = pci::bindings::PCI_CLASS_OTHERS as u16;
//!     const REALIZE: Option<fn(&Self) -> util::Result<()>> = Some(Self::realize);
//! }
//! pci::register_pci_device!(MyPci, pci::CONVENTIONAL_PCI_DEVICE);
//! ```

pub mod bindings;

use std::{
    ffi::{c_int, CStr},
    ptr::NonNull,
};

pub use bindings::PCIDeviceClass;
use common::Opaque;
use hwcore::{DeviceImpl, DeviceState};
use migration::impl_vmstate_c_struct;
use qom::{bindings::InterfaceInfo, prelude::*};
use system::MemoryRegion;
use util::{Error, Result};

/// A safe wrapper around [`bindings::PCIDevice`], the parent of all PCI
/// devices (QOM type `pci-device`).
#[repr(transparent)]
#[derive(Debug, common::Wrapper)]
pub struct PCIDevice(Opaque<bindings::PCIDevice>);

// SAFETY: like DeviceState, only accessed under the BQL.
unsafe impl Send for PCIDevice {}
// SAFETY: as above.
unsafe impl Sync for PCIDevice {}

// SAFETY: "pci-device" has the layout of bindings::PCIDevice and
// PCIDeviceClass as its class (DECLARE_OBJ_CHECKERS in pci_device.h).
unsafe impl ObjectType for PCIDevice {
    type Class = PCIDeviceClass;
    const TYPE_NAME: &'static CStr =
        // SAFETY: a NUL-terminated string constant from bindgen
        unsafe { CStr::from_bytes_with_nul_unchecked(bindings::TYPE_PCI_DEVICE) };
}

qom_isa!(PCIDevice: DeviceState, Object);

// `VMSTATE_PCI_DEVICE(field, State)`: config space and IRQ state, with C's
// vmstate_pci_device (so the stream is the C device's).
impl_vmstate_c_struct!(PCIDevice, bindings::vmstate_pci_device);

/// The QOM interface of devices that plug into conventional PCI buses
/// (C `INTERFACE_CONVENTIONAL_PCI_DEVICE`).
pub const CONVENTIONAL_PCI_DEVICE: &CStr =
    // SAFETY: a NUL-terminated string constant from bindgen
    unsafe { CStr::from_bytes_with_nul_unchecked(bindings::INTERFACE_CONVENTIONAL_PCI_DEVICE) };

/// The QOM interface of devices that plug into PCI Express buses
/// (C `INTERFACE_PCIE_DEVICE`).
pub const PCIE_DEVICE: &CStr =
    // SAFETY: a NUL-terminated string constant from bindgen
    unsafe { CStr::from_bytes_with_nul_unchecked(bindings::INTERFACE_PCIE_DEVICE) };

/// One entry of a `TypeInfo`'s interface list, for
/// [`register_pci_device!`](crate::register_pci_device).
#[doc(hidden)]
pub const fn interface_info(name: &'static CStr) -> InterfaceInfo {
    InterfaceInfo {
        type_: name.as_ptr(),
    }
}

/// The terminator of a `TypeInfo`'s interface list.
#[doc(hidden)]
pub const INTERFACE_INFO_END: InterfaceInfo = InterfaceInfo {
    type_: std::ptr::null(),
};

/// Registers a PCI device type with QOM, with its PCI interfaces
/// ([`CONVENTIONAL_PCI_DEVICE`], [`PCIE_DEVICE`] or both): QEMU refuses PCI
/// device types that declare neither. Use it instead of
/// `#[derive(qom::Object)]`, which cannot declare interfaces.
#[macro_export]
macro_rules! register_pci_device {
    ($type:ty, $($iface:expr),+ $(,)?) => {
        const _: () = {
            const INTERFACES: &[::qom::bindings::InterfaceInfo] = &[
                $($crate::interface_info($iface),)+
                $crate::INTERFACE_INFO_END,
            ];
            const TYPE_INFO: ::qom::bindings::TypeInfo = ::qom::bindings::TypeInfo {
                interfaces: INTERFACES.as_ptr(),
                ..<$type as ::qom::ObjectImpl>::TYPE_INFO
            };
            ::util::module_init! {
                // SAFETY: TYPE_INFO is a static TypeInfo, registered once
                // at start-up.
                MODULE_INIT_QOM => unsafe {
                    ::qom::type_register_static(&TYPE_INFO);
                }
            }
        };
    };
}

/// Trait providing the contents of [`PCIDeviceClass`].
///
/// A PCI device is realized through `REALIZE` here, never through
/// `DeviceImpl::REALIZE`: the PCI core's own `DeviceClass::realize` first
/// places the device on its bus, and then calls this one.
pub trait PCIDeviceImpl: DeviceImpl + IsA<PCIDevice> {
    /// Vendor ID (config space offset 0x00).
    const VENDOR_ID: u16;
    /// Device ID (0x02).
    const DEVICE_ID: u16;
    /// Revision ID (0x08).
    const REVISION: u8 = 0;
    /// Class code: base class and subclass (0x0a-0x0b), e.g.
    /// `PCI_CLASS_SYSTEM_OTHER`.
    const CLASS_ID: u16;
    /// Subsystem vendor ID (0x2c); 0 lets the PCI core fill in its default.
    const SUBSYSTEM_VENDOR_ID: u16 = 0;
    /// Subsystem ID (0x2e); 0 lets the PCI core fill in its default.
    const SUBSYSTEM_ID: u16 = 0;

    /// Realize, once the device has its bus address and config space:
    /// register the BARs here.
    const REALIZE: Option<fn(&Self) -> Result<()>> = None;

    /// The reverse of `REALIZE`, on unplug (the BARs are unmapped by the
    /// PCI core itself).
    const EXIT: Option<fn(&Self)> = None;
}

/// # Safety
///
/// Called by the PCI core's realize with a live instance of `T`.
unsafe extern "C" fn rust_pci_realize_fn<T: PCIDeviceImpl>(
    dev: *mut bindings::PCIDevice,
    errp: *mut *mut util::bindings::Error,
) {
    let state = NonNull::new(dev).unwrap().cast::<T>();
    // SAFETY: QOM gives us an instance of T (the class is T's or a subclass)
    let result = <T as PCIDeviceImpl>::REALIZE.unwrap()(unsafe { state.as_ref() });
    // SAFETY: errp comes from the caller of realize
    unsafe {
        Error::ok_or_propagate(result, errp);
    }
}

/// # Safety
///
/// Called by the PCI core's unrealize with a live instance of `T`.
unsafe extern "C" fn rust_pci_exit_fn<T: PCIDeviceImpl>(dev: *mut bindings::PCIDevice) {
    let state = NonNull::new(dev).unwrap().cast::<T>();
    // SAFETY: as in rust_pci_realize_fn
    <T as PCIDeviceImpl>::EXIT.unwrap()(unsafe { state.as_ref() });
}

impl PCIDeviceClass {
    /// Fill in the virtual methods and ids of `PCIDeviceClass` (and of its
    /// `DeviceClass`) from the `PCIDeviceImpl` and `DeviceImpl` traits.
    pub fn class_init<T: PCIDeviceImpl>(&mut self) {
        assert!(
            <T as DeviceImpl>::REALIZE.is_none(),
            "a PCI device is realized through PCIDeviceImpl::REALIZE"
        );
        self.parent_class.class_init::<T>();
        if <T as PCIDeviceImpl>::REALIZE.is_some() {
            self.realize = Some(rust_pci_realize_fn::<T>);
        }
        if <T as PCIDeviceImpl>::EXIT.is_some() {
            self.exit = Some(rust_pci_exit_fn::<T>);
        }
        self.vendor_id = T::VENDOR_ID;
        self.device_id = T::DEVICE_ID;
        self.revision = T::REVISION;
        self.class_id = T::CLASS_ID;
        self.subsystem_vendor_id = T::SUBSYSTEM_VENDOR_ID;
        self.subsystem_id = T::SUBSYSTEM_ID;
    }
}

/// What a BAR decodes: its attribute bits in config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarType {
    /// I/O space.
    Io,
    /// 32-bit memory space, not prefetchable.
    Memory32,
    /// 64-bit memory space (takes two BAR slots), not prefetchable.
    Memory64,
    /// 32-bit prefetchable memory space.
    Memory32Prefetch,
    /// 64-bit prefetchable memory space (takes two BAR slots).
    Memory64Prefetch,
}

impl BarType {
    /// The `attr` argument of C's `pci_register_bar`.
    pub const fn attr(self) -> u8 {
        (match self {
            BarType::Io => bindings::PCI_BASE_ADDRESS_SPACE_IO,
            BarType::Memory32 => bindings::PCI_BASE_ADDRESS_SPACE_MEMORY,
            BarType::Memory64 => {
                bindings::PCI_BASE_ADDRESS_SPACE_MEMORY | bindings::PCI_BASE_ADDRESS_MEM_TYPE_64
            }
            BarType::Memory32Prefetch => {
                bindings::PCI_BASE_ADDRESS_SPACE_MEMORY | bindings::PCI_BASE_ADDRESS_MEM_PREFETCH
            }
            BarType::Memory64Prefetch => {
                bindings::PCI_BASE_ADDRESS_SPACE_MEMORY
                    | bindings::PCI_BASE_ADDRESS_MEM_TYPE_64
                    | bindings::PCI_BASE_ADDRESS_MEM_PREFETCH
            }
        }) as u8
    }
}

/// Number of BARs of a type 0 (endpoint) header.
pub const NUM_BARS: u32 = 6;

/// Trait for methods of [`PCIDevice`] and its subclasses.
pub trait PCIDeviceMethods: ObjectDeref
where
    Self::Target: IsA<PCIDevice>,
{
    /// Exposes `mr` to the guest as BAR `bar` (0 to 5). The region's size
    /// must be a power of two; a 64-bit BAR also takes slot `bar + 1`.
    /// Call it from `PCIDeviceImpl::REALIZE`.
    fn register_bar(&self, bar: u32, typ: BarType, mr: &MemoryRegion) {
        assert!(bql::is_locked());
        let last = match typ {
            BarType::Memory64 | BarType::Memory64Prefetch => bar + 1,
            _ => bar,
        };
        assert!(last < NUM_BARS, "BAR {bar} ({typ:?}) out of range");
        // SAFETY: a live, initialized region
        let size = unsafe { system::bindings::memory_region_size(mr.as_mut_ptr()) };
        assert!(
            size.is_power_of_two(),
            "BAR {bar}: size {size:#x} is not a power of two"
        );
        // SAFETY: both are live objects, the region owned by the device;
        // the checks above are those pci_register_bar() would assert.
        unsafe {
            bindings::pci_register_bar(
                self.upcast().as_mut_ptr(),
                bar as c_int,
                typ.attr(),
                mr.as_mut_ptr(),
            );
        }
    }

    /// Where the guest mapped BAR `bar`, if it did.
    fn bar_addr(&self, bar: u32) -> Option<u64> {
        assert!(bql::is_locked());
        assert!(bar < NUM_BARS);
        // SAFETY: a live device; pci_get_bar_addr reads its own fields.
        let addr = unsafe { bindings::pci_get_bar_addr(self.upcast().as_mut_ptr(), bar as c_int) };
        // PCI_BAR_UNMAPPED
        (addr != u64::MAX).then_some(addr)
    }

    /// Drives the device's `INTx` pin (the one in its config space).
    fn set_irq(&self, level: bool) {
        assert!(bql::is_locked());
        // SAFETY: a live, realized device (INTx is routed at realize).
        unsafe { bindings::pci_set_irq(self.upcast().as_mut_ptr(), level.into()) }
    }
}

impl<R: ObjectDeref> PCIDeviceMethods for R where R::Target: IsA<PCIDevice> {}
