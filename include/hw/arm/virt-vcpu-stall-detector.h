/*
 * Arm virt board support for the vcpu-stall-detector
 * (hw/arm/virt-vcpu-stall-detector.c)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_ARM_VIRT_VCPU_STALL_DETECTOR_H
#define HW_ARM_VIRT_VCPU_STALL_DETECTOR_H

#include "hw/arm/virt.h"

/* Plug time: wire CPU i's interrupt (GPIO out i) to its PPI, if any */
bool virt_wire_vcpu_stall_detector(VirtMachineState *vms, DeviceState *dev,
                                   Error **errp);

/* Machine done: the device's node under the platform bus, if present */
void virt_fdt_add_vcpu_stall_detector(VirtMachineState *vms);

#endif
