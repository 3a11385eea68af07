/*
 * ACPI description of the ISA pvpanic device written in Rust
 * (rust/hw/misc/pvpanic_isa): QEMU builds AML only from C.
 *
 * The AML is byte-for-byte what hw/misc/pvpanic-isa.c produces, so that
 * guests, and tests/data/acpi's expected tables, see no difference.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "hw/acpi/acpi_aml_interface.h"
#include "hw/acpi/aml-build.h"
#include "hw/misc/pvpanic-rust.h"

/* Device PEVT: _HID QEMU0001, one I/O port, RDPT/WRPT to access it */
static void pvpanic_isa_rust_build_aml(AcpiDevAmlIf *adev, Aml *scope)
{
    uint16_t port = object_property_get_uint(OBJECT(adev), "ioport",
                                             &error_abort);
    Aml *dev = aml_device("PEVT");
    Aml *crs = aml_resource_template();
    Aml *field, *rdpt, *wrpt;

    aml_append(dev, aml_name_decl("_HID", aml_string("QEMU0001")));

    aml_append(crs, aml_io(AML_DECODE16, port, port, 1, 1));
    aml_append(dev, aml_name_decl("_CRS", crs));

    aml_append(dev, aml_operation_region("PEOR", AML_SYSTEM_IO,
                                          aml_int(port), 1));
    field = aml_field("PEOR", AML_BYTE_ACC, AML_NOLOCK, AML_PRESERVE);
    aml_append(field, aml_named_field("PEPT", 8));
    aml_append(dev, field);

    /* present, enabled, shown in UI, functioning */
    aml_append(dev, aml_name_decl("_STA", aml_int(0xF)));

    rdpt = aml_method("RDPT", 0, AML_NOTSERIALIZED);
    aml_append(rdpt, aml_store(aml_name("PEPT"), aml_local(0)));
    aml_append(rdpt, aml_return(aml_local(0)));
    aml_append(dev, rdpt);

    wrpt = aml_method("WRPT", 1, AML_NOTSERIALIZED);
    aml_append(wrpt, aml_store(aml_arg(0), aml_name("PEPT")));
    aml_append(dev, wrpt);

    aml_append(scope, dev);
}

void pvpanic_isa_rust_class_init_acpi(ObjectClass *klass)
{
    ACPI_DEV_AML_IF_CLASS(klass)->build_dev_aml = pvpanic_isa_rust_build_aml;
}
