/*
 * Input for bindgen: QEMU's PCI device model (hw/pci/pci_device.h), for
 * the Rust PCI layer in rust/hw/pci. Only the types and functions a PCI
 * device needs are generated (allow lists in meson.build); the
 * types they refer to come from QEMU's Rust crates (src/bindings.rs).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

/* As in rust/hw/core/wrapper.h: clang's stdatomic.h is not usable */
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
#include "hw/pci/pci_device.h"
