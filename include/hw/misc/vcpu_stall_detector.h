/*
 * vCPU stall detector (Rust device: rust/hw/misc/vcpu_stall_detector)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_VCPU_STALL_DETECTOR_H
#define HW_MISC_VCPU_STALL_DETECTOR_H

#define TYPE_VCPU_STALL_DETECTOR "vcpu-stall-detector"

/*
 * Linux's binding:
 * Documentation/devicetree/bindings/misc/qemu,vcpu-stall-detector.yaml
 */
#define VCPU_STALL_DETECTOR_FDT_COMPAT "qemu,vcpu-stall-detector"

/* One bank of four 32-bit registers per vCPU */
#define VCPU_STALL_DETECTOR_BANK_SIZE 0x10

/*
 * hw/misc/vcpu-stall-detector-host.c: run-state facts the Rust device
 * cannot reach from Rust (a thread-local, CPUState fields, macros).
 */

/* cpu_index of the vCPU running this code, or -1 (main loop, qtest) */
int vcpu_stall_detector_current_cpu(void);
/* Host thread id of vCPU @cpu_index, or 0 if there is none (yet) */
int vcpu_stall_detector_cpu_thread_id(int cpu_index);
/* Record/replay (-icount rr=record|replay) is active */
bool vcpu_stall_detector_replay_active(void);
/* The watchdog action is inject-nmi */
bool vcpu_stall_detector_action_is_nmi(void);
/* Some object of the machine implements TYPE_NMI (inject-nmi does something) */
bool vcpu_stall_detector_machine_has_nmi(void);

#endif
