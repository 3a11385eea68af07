/*
 * Arm virt board support for the vcpu-stall-detector (a dynamic sysbus
 * device on the platform bus): its per-CPU PPIs and its device tree node.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bitops.h"
#include "hw/arm/virt.h"
#include "hw/arm/fdt.h"
#include "hw/intc/arm_gic_common.h"
#include "hw/platform-bus.h"
#include "hw/sysbus.h"
#include "system/device_tree.h"
#include "hw/misc/vcpu_stall_detector.h"
#include "hw/arm/virt-vcpu-stall-detector.h"

/*
 * vcpu-stall-detector: CPU i's interrupt is GPIO output i, wired to that
 * CPU's PPI (the "ppi" property, -1 for none).
 */
bool virt_wire_vcpu_stall_detector(VirtMachineState *vms, DeviceState *dev,
                                   Error **errp)
{
    static const int board_ppis[] = {
        ARCH_TIMER_S_EL2_VIRT_IRQ, ARCH_TIMER_S_EL2_IRQ, VIRTUAL_PMU_IRQ,
        ARCH_GIC_MAINT_IRQ, ARCH_TIMER_NS_EL2_IRQ, ARCH_TIMER_VIRT_IRQ,
        ARCH_TIMER_NS_EL2_VIRT_IRQ, ARCH_TIMER_S_EL1_IRQ,
        ARCH_TIMER_NS_EL1_IRQ,
    };
    int ppi = object_property_get_int(OBJECT(dev), "ppi", &error_abort);
    /* GPIO inputs of the GIC: the SPIs, then GIC_INTERNAL lines per CPU */
    int spis = object_property_get_uint(OBJECT(vms->gic), "num-irq",
                                        &error_abort) - GIC_INTERNAL;
    unsigned int cpu;
    int i;

    if (ppi < 0) {
        return true;
    }
    for (i = 0; i < ARRAY_SIZE(board_ppis); i++) {
        if (INTID_TO_PPI(board_ppis[i]) == ppi) {
            error_setg(errp, "vcpu-stall-detector: property 'ppi' (%d) is "
                       "already used by the virt board", ppi);
            return false;
        }
    }
    for (cpu = 0; cpu < MACHINE(vms)->smp.cpus; cpu++) {
        qdev_connect_gpio_out(dev, cpu,
                              qdev_get_gpio_in(vms->gic,
                                               spis + cpu * GIC_INTERNAL +
                                               GIC_NR_SGIS + ppi));
    }
    return true;
}

/* Its node, under the platform bus, per qemu,vcpu-stall-detector.yaml */
void virt_fdt_add_vcpu_stall_detector(VirtMachineState *vms)
{
    MachineState *ms = MACHINE(vms);
    Object *obj = object_resolve_path_type("", TYPE_VCPU_STALL_DETECTOR, NULL);
    SysBusDevice *sbd;
    uint64_t off, size;
    int ppi;
    char *node;

    if (!obj || !vms->platform_bus_dev) {
        return;
    }
    sbd = SYS_BUS_DEVICE(obj);
    off = platform_bus_get_mmio_addr(PLATFORM_BUS_DEVICE(vms->platform_bus_dev),
                                     sbd, 0);
    size = memory_region_size(sysbus_mmio_get_region(sbd, 0));
    node = g_strdup_printf("/platform-bus@%" PRIx64 "/vcpu-stall-detector@%"
                           PRIx64, vms->memmap[VIRT_PLATFORM_BUS].base, off);
    qemu_fdt_add_subnode(ms->fdt, node);
    qemu_fdt_setprop_string(ms->fdt, node, "compatible",
                            VCPU_STALL_DETECTOR_FDT_COMPAT);
    qemu_fdt_setprop_cells(ms->fdt, node, "reg", off, size);
    qemu_fdt_setprop_cell(ms->fdt, node, "clock-frequency",
                          object_property_get_uint(obj, "clock-frequency",
                                                   &error_abort));
    qemu_fdt_setprop_cell(ms->fdt, node, "timeout-sec",
                          object_property_get_uint(obj, "timeout-sec",
                                                   &error_abort));
    ppi = object_property_get_int(obj, "ppi", &error_abort);
    if (ppi >= 0) {
        uint32_t flags = GIC_FDT_IRQ_FLAGS_EDGE_LO_HI;

        if (vms->gic_version == VIRT_GIC_VERSION_2) {
            flags = deposit32(flags, GIC_FDT_IRQ_PPI_CPU_START,
                              GIC_FDT_IRQ_PPI_CPU_WIDTH,
                              (1 << ms->smp.cpus) - 1);
        }
        qemu_fdt_setprop_cells(ms->fdt, node, "interrupts",
                               GIC_FDT_IRQ_TYPE_PPI, ppi, flags);
    }
    g_free(node);
}
