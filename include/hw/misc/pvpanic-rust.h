/*
 * C glue of the pvpanic devices written in Rust (rust/hw/misc/pvpanic*)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_PVPANIC_RUST_H
#define HW_MISC_PVPANIC_RUST_H

/* Called by the ISA pvpanic's class_init: installs its ACPI AML builder */
void pvpanic_isa_rust_class_init_acpi(ObjectClass *klass);

#endif
