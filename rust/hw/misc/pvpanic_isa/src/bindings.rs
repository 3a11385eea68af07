// SPDX-License-Identifier: GPL-2.0-or-later

//! bindgen output for `ISADevice` (wrapper.h); the types it refers to come
//! from QEMU's crates.

#![allow(
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    clippy::pedantic,
    clippy::restriction,
    clippy::style
)]

pub use hwcore::bindings::DeviceState;

#[cfg(MESON)]
include!("pvpanic-isa-bindings.inc.rs");

#[cfg(not(MESON))]
include!(concat!(env!("OUT_DIR"), "/pvpanic-isa-bindings.inc.rs"));
