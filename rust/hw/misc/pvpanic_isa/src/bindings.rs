// SPDX-License-Identifier: GPL-2.0-or-later

//! bindgen output for `ISADevice`, `isa_register_ioport`, `fw_cfg` and the C
//! ACPI builder (wrapper.h, allow list in meson.build); the types they refer
//! to are QEMU's crates' own.

#![allow(
    dead_code,
    improper_ctypes_definitions,
    improper_ctypes,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unnecessary_transmutes,
    unsafe_op_in_unsafe_fn,
    clippy::pedantic,
    clippy::restriction,
    clippy::style,
    clippy::missing_const_for_fn,
    clippy::ptr_offset_with_cast,
    clippy::useless_transmute,
    clippy::missing_safety_doc,
    clippy::too_many_arguments
)]

pub use hwcore::bindings::DeviceState;
pub use qom::bindings::ObjectClass;
pub use system::bindings::MemoryRegion;

#[cfg(MESON)]
include!("bindings.inc.rs");

#[cfg(not(MESON))]
include!(concat!(env!("OUT_DIR"), "/bindings.inc.rs"));
