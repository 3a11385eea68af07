/*
 * Input for bindgen: the C functions and types of QEMU the vcpu-stall-detector
 * crate calls that QEMU's Rust crates do not bind. Only the items named in
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
#include "qemu/error-report.h"
#include "qapi/qapi-events-run-state.h"
#include "qapi/visitor.h"
#include "system/watchdog.h"
#include "hw/misc/vcpu_stall_detector.h"
