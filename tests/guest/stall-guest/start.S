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

/*
 * IRQs at the current EL (vectors 1 and 5, SP_EL0 or SP_ELx) go to
 * irq_handler; they are only unmasked in ppi mode. Any other exception is a
 * bug of this program: report it and stop the CPU.
 */
    .balign 2048
vectors:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 128
    .if \n == 1 || \n == 5
    b       irq_entry
    .else
    mov     x0, #\n
    b       exception
    .endif
    .endr

/* Saves the registers a C function may clobber; IRQs stay masked inside. */
irq_entry:
    sub     sp, sp, #(20 * 8)
    stp     x0, x1, [sp, #(0 * 8)]
    stp     x2, x3, [sp, #(2 * 8)]
    stp     x4, x5, [sp, #(4 * 8)]
    stp     x6, x7, [sp, #(6 * 8)]
    stp     x8, x9, [sp, #(8 * 8)]
    stp     x10, x11, [sp, #(10 * 8)]
    stp     x12, x13, [sp, #(12 * 8)]
    stp     x14, x15, [sp, #(14 * 8)]
    stp     x16, x17, [sp, #(16 * 8)]
    stp     x18, x30, [sp, #(18 * 8)]
    bl      irq_handler
    ldp     x0, x1, [sp, #(0 * 8)]
    ldp     x2, x3, [sp, #(2 * 8)]
    ldp     x4, x5, [sp, #(4 * 8)]
    ldp     x6, x7, [sp, #(6 * 8)]
    ldp     x8, x9, [sp, #(8 * 8)]
    ldp     x10, x11, [sp, #(10 * 8)]
    ldp     x12, x13, [sp, #(12 * 8)]
    ldp     x14, x15, [sp, #(14 * 8)]
    ldp     x16, x17, [sp, #(16 * 8)]
    ldp     x18, x30, [sp, #(18 * 8)]
    add     sp, sp, #(20 * 8)
    eret

exception:
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    bl      report_exception
    b       park
