/*
 * ACPI (DSDT) descriptions of vigil's platform-bus devices on Arm virt
 * (hw/arm/virt-vigil-acpi.c)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_ARM_VIRT_VIGIL_ACPI_H
#define HW_ARM_VIRT_VIGIL_ACPI_H

#include "hw/acpi/aml-build.h"
#include "hw/arm/virt.h"

/*
 * Appends to @scope (\_SB) one Device per vcpu-stall-detector and
 * pvpanic-mmio on the platform bus; appends nothing when there is none.
 */
void virt_acpi_dsdt_add_vigil(Aml *scope, VirtMachineState *vms);

#endif
