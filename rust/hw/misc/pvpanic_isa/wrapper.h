/*
 * Input for bindgen: what the ISA pvpanic needs that QEMU's Rust crates do
 * not bind: its parent ISADevice, isa_register_ioport(), fw_cfg, and the C
 * device's own ACPI builder (hw/misc/pvpanic.h). Only the items named in
 * meson.build are generated; the types they refer to are QEMU's crates' own
 * (src/bindings.rs).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

/* As in rust/hw/char/pl011/wrapper.h: clang's stdatomic.h is not usable */
#ifndef __CLANG_STDATOMIC_H
#define __CLANG_STDATOMIC_H
typedef enum memory_order {
  memory_order_relaxed,
  memory_order_consume,
  memory_order_acquire,
  memory_order_release,
  memory_order_acq_rel,
  memory_order_seq_cst,
} memory_order;
#endif /* __CLANG_STDATOMIC_H */

#include "qemu/osdep.h"
#include "hw/isa/isa.h"
#include "hw/nvram/fw_cfg.h"
#include "hw/misc/pvpanic.h"
