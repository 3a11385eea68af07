/*
 * QTest: the AML that Arm virt's DSDT gets for vcpu-stall-detector and
 * pvpanic-mmio (hw/arm/virt-vigil-acpi.c, patches/0007), byte for byte.
 *
 * The tables are read as QEMU hands them to the firmware (fw_cfg file
 * etc/acpi/tables; virt builds them with or without firmware). Checks:
 *   - without the devices, the DSDT is QEMU's own expected table
 *     (tests/data/acpi/aarch64/virt/DSDT, the bios-tables-test default
 *     virt case, same command line but for the firmware, which does not
 *     change the DSDT), but for the checksum the firmware fills in;
 *   - with them, it is exactly that DSDT with the Devices below (compiled
 *     from the ASL in the comments with iasl 20200925) appended to the
 *     \_SB scope, whose PkgLength and the table length grow accordingly;
 *   - ppi=-1 leaves the Interrupt descriptor out; acpi=off builds no table.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "libqtest.h"

/* virt's VIRT_FW_CFG: data at +0, selector (big-endian) at +8 */
#define FW_CFG_BASE 0x09020000ULL
#define FW_CFG_FILE_DIR 0x19
#define EXPECTED_DSDT "tests/data/acpi/aarch64/virt/DSDT"
/*
 * bios-tables-test's test_acpi_aarch64_virt_tcg. Its firmware is never run
 * here, but virt only builds its GED (and with ras=on, the HEST) when
 * pflash 0 has a drive: an empty (sparse) 64 MiB file.
 */
#define VIRT_ARGS "-machine virt,ras=on -cpu cortex-a57 " \
    "-smbios type=4,max-speed=2900,current-speed=2700 " \
    "-drive if=pflash,format=raw,unit=0,readonly=on,file=%s "
#define FLASH_SIZE (64 * 1024 * 1024)

static char *flash_path;

static QTestState *start_virt(const char *extra)
{
    return qtest_initf(VIRT_ARGS "%s", flash_path, extra);
}

/*
 * Device (VSD0) {
 *     Name (_HID, "PRP0001")
 *     Name (_UID, Zero)
 *     Name (_CRS, ResourceTemplate () {
 *         Memory32Fixed (ReadWrite, 0x0C000000, 0x00001000)
 *         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 31 }
 *     })
 *     Name (_DSD, Package (0x02) {
 *         ToUUID ("daffd814-6eba-4d8c-8a91-bc9bbf4aa301"),
 *         Package (0x03) {
 *             Package (0x02) { "compatible", "qemu,vcpu-stall-detector" },
 *             Package (0x02) { "clock-frequency", 0x0A },
 *             Package (0x02) { "timeout-sec", 0x05 }
 *         }
 *     })
 * }
 */
static const uint8_t vsd0[] = {
    0x5b, 0x82, 0x4c, 0x0a, 'V', 'S', 'D', '0',
    0x08, '_', 'H', 'I', 'D', 0x0d, 'P', 'R', 'P', '0', '0', '0', '1', 0x00,
    0x08, '_', 'U', 'I', 'D', 0x00,
    0x08, '_', 'C', 'R', 'S', 0x11, 0x1a, 0x0a, 0x17,
    0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x10, 0x00, 0x00,
    0x89, 0x06, 0x00, 0x03, 0x01, 0x1f, 0x00, 0x00, 0x00,
    0x79, 0x00,
    0x08, '_', 'D', 'S', 'D', 0x12, 0x4c, 0x06, 0x02,
    0x11, 0x13, 0x0a, 0x10,
    0x14, 0xd8, 0xff, 0xda, 0xba, 0x6e, 0x8c, 0x4d,
    0x8a, 0x91, 0xbc, 0x9b, 0xbf, 0x4a, 0xa3, 0x01,
    0x12, 0x44, 0x05, 0x03,
    0x12, 0x28, 0x02, 0x0d, 'c', 'o', 'm', 'p', 'a', 't', 'i', 'b', 'l', 'e', 0x00,
    0x0d, 'q', 'e', 'm', 'u', ',', 'v', 'c', 'p', 'u', '-', 's', 't', 'a', 'l', 'l',
    '-', 'd', 'e', 't', 'e', 'c', 't', 'o', 'r', 0x00,
    0x12, 0x15, 0x02, 0x0d, 'c', 'l', 'o', 'c', 'k', '-', 'f', 'r', 'e', 'q', 'u',
    'e', 'n', 'c', 'y', 0x00, 0x0a, 0x0a,
    0x12, 0x11, 0x02, 0x0d, 't', 'i', 'm', 'e', 'o', 'u', 't', '-', 's', 'e', 'c',
    0x00, 0x0a, 0x05,
};

/*
 * Device (PEV0) {
 *     Name (_HID, "QEMU0001")
 *     Name (_UID, Zero)
 *     Name (_CRS, ResourceTemplate () {
 *         Memory32Fixed (ReadWrite, 0x0C001000, 0x00000002)
 *     })
 * }
 */
static const uint8_t pev0[] = {
    0x5b, 0x82, 0x31, 'P', 'E', 'V', '0',
    0x08, '_', 'H', 'I', 'D', 0x0d, 'Q', 'E', 'M', 'U', '0', '0', '0', '1', 0x00,
    0x08, '_', 'U', 'I', 'D', 0x00,
    0x08, '_', 'C', 'R', 'S', 0x11, 0x11, 0x0a, 0x0e,
    0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0x0c, 0x02, 0x00, 0x00, 0x00,
    0x79, 0x00,
};

/* fw_cfg file @name (its size in *@len), or NULL (libqos knows no virt layout) */
static uint8_t *fw_cfg_file(QTestState *qts, const char *name, size_t *len)
{
    uint32_t count, i, size;
    uint16_t key;
    uint8_t entry[64], *data;
    size_t off;

    qtest_writew(qts, FW_CFG_BASE + 8, bswap16(FW_CFG_FILE_DIR));
    for (count = 0, i = 0; i < 4; i++) {
        count = count << 8 | qtest_readb(qts, FW_CFG_BASE);
    }
    for (i = 0; i < count; i++) {
        for (off = 0; off < sizeof(entry); off++) {
            entry[off] = qtest_readb(qts, FW_CFG_BASE);
        }
        if (!strncmp((char *)entry + 8, name, 56)) {
            break;
        }
    }
    if (i == count) {
        *len = 0;
        return NULL;
    }
    size = ldl_be_p(entry);
    key = lduw_be_p(entry + 4);
    data = g_malloc(size);
    qtest_writew(qts, FW_CFG_BASE + 8, bswap16(key));
    for (off = 0; off + 8 <= size; off += 8) {
        stq_le_p(data + off, qtest_readq(qts, FW_CFG_BASE));
    }
    for (; off < size; off++) {
        data[off] = qtest_readb(qts, FW_CFG_BASE);
    }
    *len = size;
    return data;
}

/* The DSDT QEMU gives the firmware, from fw_cfg etc/acpi/tables */
static GByteArray *read_dsdt(const char *extra)
{
    QTestState *qts = start_virt(extra);
    size_t len;
    g_autofree uint8_t *blob = fw_cfg_file(qts, "etc/acpi/tables", &len);
    GByteArray *dsdt = NULL;
    size_t off;

    g_assert_nonnull(blob);
    g_assert_cmpuint(len, >, 36);
    for (off = 0; off + 36 <= len; off++) {
        uint32_t tlen = ldl_le_p(blob + off + 4);

        if (!memcmp(blob + off, "DSDT", 4) && tlen >= 36 && off + tlen <= len) {
            dsdt = g_byte_array_new();
            g_byte_array_append(dsdt, blob + off, tlen);
            break;
        }
    }
    g_assert_nonnull(dsdt);
    qtest_quit(qts);
    dsdt->data[9] = 0;      /* checksum: the firmware's linker computes it */
    return dsdt;
}

/* AML PkgLength at @p: its value (which counts its own bytes), and size */
static uint32_t pkglen_decode(const uint8_t *p, int *nbytes)
{
    int n = (p[0] >> 6) + 1, i;
    uint32_t v;

    if (n == 1) {
        *nbytes = 1;
        return p[0] & 0x3f;
    }
    v = p[0] & 0x0f;
    for (i = 1; i < n; i++) {
        v |= (uint32_t)p[i] << (4 + 8 * (i - 1));
    }
    *nbytes = n;
    return v;
}

/* Encodes @payload bytes plus the PkgLength itself, as aml-build.c does */
static int pkglen_encode(uint8_t *out, uint32_t payload)
{
    int n, i;
    uint32_t v;

    if (payload + 1 < (1 << 6)) {
        out[0] = payload + 1;
        return 1;
    }
    n = payload + 2 < (1 << 12) ? 2 : payload + 3 < (1 << 20) ? 3 : 4;
    v = payload + n;
    out[0] = ((n - 1) << 6) | (v & 0x0f);
    for (i = 1; i < n; i++) {
        out[i] = v >> (4 + 8 * (i - 1));
    }
    return n;
}

/* @base (a DSDT whose AML starts with Scope (\_SB)) with @aml appended to it */
static GByteArray *append_to_sb(GByteArray *base, const uint8_t *aml,
                                size_t aml_len)
{
    const uint8_t *p = base->data + 36;
    GByteArray *out = g_byte_array_new();
    uint8_t enc[4];
    int n, m;
    uint32_t scope_len, payload;

    g_assert_cmphex(p[0], ==, 0x10);  /* ScopeOp */
    scope_len = pkglen_decode(p + 1, &n);
    g_assert_true(!memcmp(p + 1 + n, "\\_SB_", 5));
    payload = scope_len - n + aml_len;
    m = pkglen_encode(enc, payload);
    g_byte_array_append(out, base->data, 36);
    g_byte_array_append(out, p, 1);
    g_byte_array_append(out, enc, m);
    g_byte_array_append(out, p + 1 + n, scope_len - n);
    g_byte_array_append(out, aml, aml_len);
    g_byte_array_append(out, p + 1 + scope_len,
                        base->len - 36 - 1 - scope_len);
    stl_le_p(out->data + 4, out->len);
    return out;
}

static void assert_same(GByteArray *got, GByteArray *want, const char *what)
{
    size_t i;

    for (i = 0; i < MIN(got->len, want->len); i++) {
        if (got->data[i] != want->data[i]) {
            g_test_message("%s: byte %zu is 0x%02x, expected 0x%02x", what, i,
                           got->data[i], want->data[i]);
            break;
        }
    }
    if (i == got->len && got->len != want->len) {
        g_test_message("%s: %u bytes, expected %u", what, got->len, want->len);
    }
    g_assert_cmpmem(got->data, got->len, want->data, want->len);
}

static bool contains(GByteArray *a, const char *s)
{
    return memmem(a->data, a->len, s, strlen(s)) != NULL;
}

static void dump(GByteArray *a, const char *name)
{
    const char *dir = g_getenv("VIGIL_ACPI_DUMP_DIR");

    if (dir) {
        g_autofree char *path = g_build_filename(dir, name, NULL);

        g_assert_true(g_file_set_contents(path, (char *)a->data, a->len, NULL));
    }
}

static void test_no_device(void)
{
    g_autoptr(GByteArray) dsdt = read_dsdt("");
    g_autofree char *want_data = NULL;
    g_autoptr(GByteArray) want = g_byte_array_new();
    gsize want_len;

    dump(dsdt, "DSDT.none");
    g_assert_true(g_file_get_contents(EXPECTED_DSDT, &want_data, &want_len,
                                      NULL));
    g_byte_array_append(want, (uint8_t *)want_data, want_len);
    g_assert_cmpuint(want->len, >, 36);
    want->data[9] = 0;
    assert_same(dsdt, want, "DSDT without vigil devices vs " EXPECTED_DSDT);
    g_assert_false(contains(dsdt, "PRP0001"));
    g_assert_false(contains(dsdt, "QEMU0001"));
}

static void test_both(void)
{
    g_autoptr(GByteArray) base = read_dsdt("");
    g_autoptr(GByteArray) dsdt = read_dsdt(
        "-device vcpu-stall-detector,timeout-sec=5 -device pvpanic-mmio");
    g_autoptr(GByteArray) aml = g_byte_array_new();
    g_autoptr(GByteArray) want = NULL;

    dump(dsdt, "DSDT.vigil");
    g_byte_array_append(aml, vsd0, sizeof(vsd0));
    g_byte_array_append(aml, pev0, sizeof(pev0));
    want = append_to_sb(base, aml->data, aml->len);
    assert_same(dsdt, want, "DSDT with vcpu-stall-detector + pvpanic-mmio");
}

static void test_no_ppi(void)
{
    g_autoptr(GByteArray) base = read_dsdt("");
    g_autoptr(GByteArray) dsdt = read_dsdt(
        "-device vcpu-stall-detector,timeout-sec=5,ppi=-1");
    g_autoptr(GByteArray) want = NULL;
    uint8_t aml[sizeof(vsd0)];
    size_t crs = 28, irq = 49, irq_len = 9;   /* offsets in vsd0 */

    /* vsd0 without its Interrupt descriptor: 3 PkgLength/size bytes shrink */
    memcpy(aml, vsd0, irq);
    memcpy(aml + irq, vsd0 + irq + irq_len, sizeof(vsd0) - irq - irq_len);
    aml[2] -= irq_len;                  /* Device PkgLength */
    g_assert_cmphex(aml[crs + 5], ==, 0x11);
    aml[crs + 6] -= irq_len;            /* Buffer PkgLength */
    aml[crs + 8] -= irq_len;            /* Buffer size */
    want = append_to_sb(base, aml, sizeof(vsd0) - irq_len);
    assert_same(dsdt, want, "DSDT with vcpu-stall-detector,ppi=-1");
}

static void test_acpi_off(void)
{
    QTestState *qts = start_virt("-machine acpi=off "
                                 "-device vcpu-stall-detector "
                                 "-device pvpanic-mmio");
    size_t len;
    g_autofree uint8_t *blob = fw_cfg_file(qts, "etc/acpi/tables", &len);
    g_autofree uint8_t *loader = fw_cfg_file(qts, "etc/table-loader", &len);
    g_autofree uint8_t *wait = fw_cfg_file(qts, "etc/boot-fail-wait", &len);

    /* no tables, no loader script, though the fw_cfg directory is there */
    g_assert_null(blob);
    g_assert_null(loader);
    g_assert_nonnull(wait);
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    int fd, ret;

    g_test_init(&argc, &argv, NULL);
    fd = g_file_open_tmp("vigil-virt-acpi-flash-XXXXXX", &flash_path, NULL);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, FLASH_SIZE), ==, 0);
    close(fd);
    qtest_add_func("/vigil-virt-acpi/no-device", test_no_device);
    qtest_add_func("/vigil-virt-acpi/stall-detector+pvpanic-mmio", test_both);
    qtest_add_func("/vigil-virt-acpi/stall-detector-no-ppi", test_no_ppi);
    qtest_add_func("/vigil-virt-acpi/acpi-off", test_acpi_off);
    ret = g_test_run();
    unlink(flash_path);
    g_free(flash_path);
    return ret;
}
