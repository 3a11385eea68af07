/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Entry points of stall-guest. QEMU's -kernel loads the ELF at its link
 * address and starts CPU 0 at _start in EL1 with the MMU off; the other CPUs
 * stay powered off until CPU 0 starts them with PSCI CPU_ON at
 * secondary_entry. Every CPU takes the stack selected by MPIDR_EL1.Aff0.
 */
#include "config.h"

    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x9, mpidr_el1
    and     x9, x9, #0xff
    cbnz    x9, park                /* only the boot CPU comes here */
    bl      set_stack_and_vbar
    /* Zero .bss (no stack is in it). */
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    str     xzr, [x0], #8
    b       1b
2:  mov     x0, #0
    bl      cpu_main
    b       park

    .global secondary_entry
secondary_entry:
    mrs     x9, mpidr_el1
    and     x9, x9, #0xff
    cmp     x9, #MAX_CPUS
    b.hs    park
    bl      set_stack_and_vbar
    mov     x0, x9
    bl      cpu_main
park:
    wfe
    b       park

/* x9 = cpu index; sets SP and VBAR_EL1 (clobbers x0, x10). */
set_stack_and_vbar:
    ldr     x0, =__stacks_top
    lsl     x10, x9, #STACK_SHIFT
    sub     x0, x0, x10
    mov     sp, x0
    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
    ret

/* Any exception is a bug of this program: report it and stop the CPU. */
    .balign 2048
vectors:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 128
    mov     x0, #\n
    b       exception
    .endr

exception:
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    bl      report_exception
    b       park
