/*
 * ACPI descriptions, for the Arm virt board's DSDT, of the platform-bus
 * devices vigil adds: pvpanic-mmio and vcpu-stall-detector. QEMU builds
 * AML only from C. hw/arm/virt-acpi-build.c calls
 * virt_acpi_dsdt_add_vigil() once, next to the TPM's description
 * (patches/0007); without such devices it appends nothing, so the DSDT is
 * byte-identical to QEMU's own.
 *
 * pvpanic-mmio (device PEVn):
 *     _HID "QEMU0001", _UID n, _CRS { Memory32Fixed (its 2 bytes) }
 *   Linux's pvpanic-mmio driver matches the ACPI id QEMU0001 (as it does
 *   for the ISA pvpanic on x86).
 *
 * vcpu-stall-detector (device VSDn):
 *     _HID "PRP0001", _UID n,
 *     _CRS { Memory32Fixed (one 16-byte bank per CPU),
 *            Interrupt (Consumer, Edge, ActiveHigh, Exclusive) { 16 + ppi } }
 *     _DSD { ToUUID ("daffd814-6eba-4d8c-8a91-bc9bbf4aa301"), Package {
 *            Package { "compatible", "qemu,vcpu-stall-detector" },
 *            Package { "clock-frequency", <clock-frequency> },
 *            Package { "timeout-sec", <timeout-sec> } } }
 *   PRP0001 plus a _DSD "compatible" lets Linux bind the unmodified OF
 *   driver (acpi_of_match_device). The interrupt is the per-CPU PPI (GSI
 *   16..31 is a PPI for the GIC's ACPI domain), left out when ppi=-1.
 *   Linux's driver reads clock-frequency and timeout-sec with
 *   of_property_read_u32() on dev->of_node, which is NULL for an ACPI
 *   device: it uses its defaults (10 Hz, 8 s) whatever the _DSD says; the
 *   properties are there for ACPI-aware drivers (device_property_read_u32).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "hw/acpi/aml-build.h"
#include "hw/arm/virt.h"
#include "hw/intc/arm_gic_common.h"
#include "hw/misc/pvpanic.h"
#include "hw/platform-bus.h"
#include "hw/sysbus.h"
#include "hw/misc/vcpu_stall_detector.h"
#include "hw/arm/virt-vigil-acpi.h"

/* ACPI 6.x device properties UUID (_DSD), per the DSD guide */
#define ACPI_DSD_DEVICE_PROPERTIES_UUID "DAFFD814-6EBA-4D8C-8A91-BC9BBF4AA301"

typedef struct VigilAcpiState {
    VirtMachineState *vms;
    Aml *scope;
    unsigned int pvpanic_count;
    unsigned int stall_count;
} VigilAcpiState;

static Aml *vigil_mmio_crs(VirtMachineState *vms, SysBusDevice *sbd)
{
    PlatformBusDevice *pbus = PLATFORM_BUS_DEVICE(vms->platform_bus_dev);
    hwaddr base = platform_bus_get_mmio_addr(pbus, sbd, 0);
    uint64_t size = memory_region_size(sysbus_mmio_get_region(sbd, 0));
    Aml *crs = aml_resource_template();

    assert(base != -1);
    base += vms->memmap[VIRT_PLATFORM_BUS].base;
    aml_append(crs, aml_memory32_fixed(base, size, AML_READ_WRITE));
    return crs;
}

static Aml *vigil_dsd_property(const char *name, Aml *value)
{
    Aml *prop = aml_package(2);

    aml_append(prop, aml_string("%s", name));
    aml_append(prop, value);
    return prop;
}

static void vigil_acpi_add_pvpanic_mmio(VigilAcpiState *s, SysBusDevice *sbd)
{
    Aml *dev = aml_device("PEV%u", s->pvpanic_count);

    aml_append(dev, aml_name_decl("_HID", aml_string("QEMU0001")));
    aml_append(dev, aml_name_decl("_UID", aml_int(s->pvpanic_count)));
    aml_append(dev, aml_name_decl("_CRS", vigil_mmio_crs(s->vms, sbd)));
    aml_append(s->scope, dev);
    s->pvpanic_count++;
}

static void vigil_acpi_add_stall_detector(VigilAcpiState *s,
                                          SysBusDevice *sbd)
{
    Object *obj = OBJECT(sbd);
    int ppi = object_property_get_int(obj, "ppi", &error_abort);
    Aml *dev = aml_device("VSD%u", s->stall_count);
    Aml *crs = vigil_mmio_crs(s->vms, sbd);
    Aml *props = aml_package(3);
    Aml *dsd = aml_package(2);

    aml_append(dev, aml_name_decl("_HID", aml_string("PRP0001")));
    aml_append(dev, aml_name_decl("_UID", aml_int(s->stall_count)));
    if (ppi >= 0) {
        uint32_t gsi = GIC_NR_SGIS + ppi;  /* PPI n is INTID 16 + n */

        aml_append(crs, aml_interrupt(AML_CONSUMER, AML_EDGE, AML_ACTIVE_HIGH,
                                      AML_EXCLUSIVE, &gsi, 1));
    }
    aml_append(dev, aml_name_decl("_CRS", crs));

    aml_append(props, vigil_dsd_property("compatible",
                          aml_string(VCPU_STALL_DETECTOR_FDT_COMPAT)));
    aml_append(props, vigil_dsd_property("clock-frequency",
                          aml_int(object_property_get_uint(obj,
                                      "clock-frequency", &error_abort))));
    aml_append(props, vigil_dsd_property("timeout-sec",
                          aml_int(object_property_get_uint(obj,
                                      "timeout-sec", &error_abort))));
    aml_append(dsd, aml_touuid(ACPI_DSD_DEVICE_PROPERTIES_UUID));
    aml_append(dsd, props);
    aml_append(dev, aml_name_decl("_DSD", dsd));
    aml_append(s->scope, dev);
    s->stall_count++;
}

static void vigil_acpi_collect(SysBusDevice *sbd, void *opaque)
{
    if (object_dynamic_cast(OBJECT(sbd), TYPE_PVPANIC_MMIO_DEVICE) ||
        object_dynamic_cast(OBJECT(sbd), TYPE_VCPU_STALL_DETECTOR)) {
        g_ptr_array_add(opaque, sbd);
    }
}

static gint vigil_by_address(gconstpointer a, gconstpointer b, gpointer pbus)
{
    hwaddr x = platform_bus_get_mmio_addr(pbus, *(SysBusDevice *const *)a, 0);
    hwaddr y = platform_bus_get_mmio_addr(pbus, *(SysBusDevice *const *)b, 0);

    return x < y ? -1 : x > y;
}

void virt_acpi_dsdt_add_vigil(Aml *scope, VirtMachineState *vms)
{
    VigilAcpiState s = { .vms = vms, .scope = scope };
    g_autoptr(GPtrArray) devs = NULL;
    guint i;

    if (!vms->platform_bus_dev) {
        return;
    }
    /* In platform-bus address order: the same AML for the same machine */
    devs = g_ptr_array_new();
    foreach_dynamic_sysbus_device(vigil_acpi_collect, devs);
    g_ptr_array_sort_with_data(devs, vigil_by_address,
                               PLATFORM_BUS_DEVICE(vms->platform_bus_dev));
    for (i = 0; i < devs->len; i++) {
        SysBusDevice *sbd = g_ptr_array_index(devs, i);

        if (object_dynamic_cast(OBJECT(sbd), TYPE_PVPANIC_MMIO_DEVICE)) {
            vigil_acpi_add_pvpanic_mmio(&s, sbd);
        } else {
            vigil_acpi_add_stall_detector(&s, sbd);
        }
    }
}
