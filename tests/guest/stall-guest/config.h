/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Build-time configuration of stall-guest (shared by C and assembly). */
#ifndef STALL_GUEST_CONFIG_H
#define STALL_GUEST_CONFIG_H

#define MAX_CPUS            8
#define STACK_SHIFT         14          /* 16 KiB per CPU */

/* Defaults; opt/vigil/stall-* fw_cfg files override them at run time. */
#ifndef STALL_TIMEOUT_S
#define STALL_TIMEOUT_S     2           /* budget T in seconds */
#endif
#ifndef STALL_PETS
#define STALL_PETS          6           /* CPU 1 stops petting after P pets; 0: never */
#endif
#ifndef STALL_HZ
#define STALL_HZ            10          /* CLOCK_FREQ_HZ written by the guest */
#endif

/* -M virt memory map */
#ifndef STALL_DETECTOR_BASE
#define STALL_DETECTOR_BASE 0x0c000000  /* first device on the platform bus */
#endif
#define UART_BASE           0x09000000  /* PL011 */
#define FW_CFG_BASE         0x09020000
#ifndef GICD_BASE
#define GICD_BASE           0x08000000  /* GICv2 distributor */
#endif
#ifndef GICC_BASE
#define GICC_BASE           0x08010000  /* GICv2 CPU interface */
#endif

/* PPI of the detector (its "ppi" property; the device tree says 15). */
#ifndef STALL_PPI
#define STALL_PPI           15
#endif

/* PSCI conduit: 1 = hvc (virt without EL2/EL3), 0 = smc. */
#ifndef PSCI_HVC
#define PSCI_HVC            1
#endif

#endif
