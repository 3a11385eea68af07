/*
 * vCPU stall detector (Rust device: rust/hw/misc/vcpu_stall_detector)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_VCPU_STALL_DETECTOR_H
#define HW_MISC_VCPU_STALL_DETECTOR_H

#define TYPE_VCPU_STALL_DETECTOR "vcpu-stall-detector"

/* Linux: Documentation/devicetree/bindings/misc/qemu,vcpu-stall-detector.yaml */
#define VCPU_STALL_DETECTOR_FDT_COMPAT "qemu,vcpu-stall-detector"

/* One bank of four 32-bit registers per vCPU */
#define VCPU_STALL_DETECTOR_BANK_SIZE 0x10

#endif
