/*
 * QTest for pvpanic-pci (rust/hw/misc/pvpanic_pci), beyond QEMU's own
 * pvpanic-pci-test: what the guest sees in config space (ids, class,
 * revision, subsystem, no INTx, no ROM), BAR 0 (2 bytes of 32-bit
 * memory, the only BAR), every event and the events property through the
 * BAR, wide and unaligned accesses, a migration between two QEMUs that
 * keeps the guest-programmed config space (VMSTATE_PCI_DEVICE), and hot
 * plug and unplug (realize, unrealize and finalize of the Rust device).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "vigil-qtest.h"
#include "libqos/pci.h"
#include "libqos/pci-pc.h"
#include "hw/pci/pci_regs.h"
#include "standard-headers/misc/pvpanic.h"

#define PVPANIC_EVENTS \
    (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN)

#define DEVFN QPCI_DEVFN(4, 0)

typedef struct {
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    QPCIBar bar;
    uint64_t bar_size;
} PvPanicPci;

/* QEMU with pvpanic-pci at 00:04.0 (plus @extra), BAR 0 mapped */
static void start(PvPanicPci *p, const char *machine, const char *extra)
{
    p->qts = qtest_initf("-M %s -device pvpanic-pci,addr=04.0%s", machine,
                         extra);
    p->bus = qpci_new_pc(p->qts, NULL);
    p->dev = qpci_device_find(p->bus, DEVFN);
    g_assert_nonnull(p->dev);
    qpci_device_enable(p->dev);
    p->bar = qpci_iomap(p->dev, 0, &p->bar_size);
}

static void stop(PvPanicPci *p)
{
    g_free(p->dev);
    qpci_free_pc(p->bus);
    qtest_quit(p->qts);
}

static uint8_t bar_readb(PvPanicPci *p, uint64_t off)
{
    return qpci_io_readb(p->dev, p->bar, off);
}

static void bar_writeb(PvPanicPci *p, uint64_t off, uint8_t v)
{
    qpci_io_writeb(p->dev, p->bar, off, v);
}

static void assert_no_guest_event(QTestState *qts)
{
    static const char *const events[] = {
        "GUEST_PANICKED", "GUEST_CRASHLOADED", "GUEST_PVSHUTDOWN",
    };

    for (int i = 0; i < ARRAY_SIZE(events); i++) {
        QDict *ev = vigil_event_so_far(qts, events[i]);

        if (ev) {
            g_error("unexpected %s", events[i]);
        }
    }
}

/* The ids Linux's pvpanic-pci driver matches, and the rest of the header */
static void test_config_space(gconstpointer machine)
{
    PvPanicPci p;

    start(&p, machine, "");
    g_assert_cmphex(qpci_config_readw(p.dev, PCI_VENDOR_ID), ==, 0x1b36);
    g_assert_cmphex(qpci_config_readw(p.dev, PCI_DEVICE_ID), ==, 0x0011);
    g_assert_cmphex(qpci_config_readb(p.dev, PCI_REVISION_ID), ==, 1);
    /* class 0x0880 "system peripheral, other", prog-if 0 */
    g_assert_cmphex(qpci_config_readw(p.dev, PCI_CLASS_DEVICE), ==, 0x0880);
    g_assert_cmphex(qpci_config_readb(p.dev, PCI_CLASS_PROG), ==, 0);
    g_assert_cmphex(qpci_config_readb(p.dev, PCI_HEADER_TYPE), ==,
                    PCI_HEADER_TYPE_NORMAL);
    /* The PCI core's defaults, as for the C device */
    g_assert_cmphex(qpci_config_readw(p.dev, PCI_SUBSYSTEM_VENDOR_ID), ==,
                    0x1af4);
    g_assert_cmphex(qpci_config_readw(p.dev, PCI_SUBSYSTEM_ID), ==, 0x1100);
    /* No interrupt, no capabilities, no option ROM */
    g_assert_cmphex(qpci_config_readb(p.dev, PCI_INTERRUPT_PIN), ==, 0);
    g_assert_false(qpci_config_readw(p.dev, PCI_STATUS) &
                   PCI_STATUS_CAP_LIST);
    qpci_config_writel(p.dev, PCI_ROM_ADDRESS, 0xffffffff);
    g_assert_cmphex(qpci_config_readl(p.dev, PCI_ROM_ADDRESS), ==, 0);
    stop(&p);
}

/* BAR 0: 32-bit memory, not prefetchable, 2 bytes; no other BAR */
static void test_bars(gconstpointer machine)
{
    PvPanicPci p;
    uint32_t bar0;

    start(&p, machine, "");
    g_assert_false(p.bar.is_io);
    bar0 = qpci_config_readl(p.dev, PCI_BASE_ADDRESS_0);
    g_assert_cmphex(bar0 & ~PCI_BASE_ADDRESS_MEM_MASK, ==,
                    PCI_BASE_ADDRESS_SPACE_MEMORY |
                    PCI_BASE_ADDRESS_MEM_TYPE_32);
    /* Sizing: writable bits are those above the size (2 bytes) */
    qpci_config_writel(p.dev, PCI_BASE_ADDRESS_0, 0xffffffff);
    g_assert_cmphex(qpci_config_readl(p.dev, PCI_BASE_ADDRESS_0), ==,
                    0xfffffffe);
    qpci_config_writel(p.dev, PCI_BASE_ADDRESS_0, bar0);
    for (int reg = PCI_BASE_ADDRESS_1; reg <= PCI_BASE_ADDRESS_5; reg += 4) {
        qpci_config_writel(p.dev, reg, 0xffffffff);
        g_assert_cmphex(qpci_config_readl(p.dev, reg), ==, 0);
    }
    /* Still decodes where it was */
    g_assert_cmphex(bar_readb(&p, 0), ==, PVPANIC_EVENTS);
    stop(&p);
}

/* Reads return the events property, on both bytes of the BAR */
static void test_reads(gconstpointer machine)
{
    PvPanicPci p;

    start(&p, machine, "");
    g_assert_cmphex(bar_readb(&p, 0), ==, PVPANIC_EVENTS);
    g_assert_cmphex(bar_readb(&p, 1), ==, PVPANIC_EVENTS);
    /* A 16-bit read is two 1-byte reads of the register */
    g_assert_cmphex(qpci_io_readw(p.dev, p.bar, 0), ==,
                    PVPANIC_EVENTS | PVPANIC_EVENTS << 8);
    stop(&p);

    start(&p, machine, ",events=1");
    g_assert_cmphex(bar_readb(&p, 0), ==, PVPANIC_PANICKED);
    stop(&p);
}

static void test_panicked(gconstpointer machine)
{
    PvPanicPci p;

    start(&p, machine, " -action panic=pause");
    bar_writeb(&p, 0, PVPANIC_PANICKED);
    vigil_expect_action(p.qts, "GUEST_PANICKED", "pause");
    stop(&p);
}

static void test_crash_loaded(gconstpointer machine)
{
    PvPanicPci p;

    start(&p, machine, "");
    bar_writeb(&p, 0, PVPANIC_CRASH_LOADED);
    vigil_expect_action(p.qts, "GUEST_CRASHLOADED", "run");
    g_assert_null(vigil_event_so_far(p.qts, "STOP"));
    stop(&p);
}

static void test_pvshutdown(gconstpointer machine)
{
    PvPanicPci p;
    QDict *ev;

    start(&p, machine, " -action shutdown=pause");
    bar_writeb(&p, 0, PVPANIC_SHUTDOWN);
    ev = qtest_qmp_eventwait_ref(p.qts, "GUEST_PVSHUTDOWN");
    qobject_unref(ev);
    ev = qtest_qmp_eventwait_ref(p.qts, "SHUTDOWN");
    g_assert_true(qdict_get_bool(qdict_get_qdict(ev, "data"), "guest"));
    qobject_unref(ev);
    stop(&p);
}

/*
 * Hostile writes: unknown bits alone do nothing; the second byte of the
 * BAR is the register too; a 16-bit write is two byte writes; the events
 * mask does not filter (as in C).
 */
static void test_hostile_writes(gconstpointer machine)
{
    PvPanicPci p;

    start(&p, machine, ",events=0 -action panic=none");
    bar_writeb(&p, 0, 0x80);
    bar_writeb(&p, 1, 0xf8);
    bar_writeb(&p, 0, 0);
    assert_no_guest_event(p.qts);
    g_assert_cmphex(bar_readb(&p, 0), ==, 0);
    bar_writeb(&p, 1, PVPANIC_CRASH_LOADED | 0x80);
    vigil_expect_action(p.qts, "GUEST_CRASHLOADED", "run");
    qpci_io_writew(p.dev, p.bar, 0, PVPANIC_PANICKED << 8);
    vigil_expect_action(p.qts, "GUEST_PANICKED", "run");
    stop(&p);
}

/*
 * Migration: the destination has the config space the guest programmed
 * on the source (BAR address, command register), so its BAR decodes at
 * the same address and a panic there is reported by the destination.
 */
static void test_migration(gconstpointer machine)
{
    g_autofree char *sock = g_strdup_printf("%s/pvpanic-pci-mig-%d.sock",
                                            g_get_tmp_dir(), getpid());
    g_autofree char *uri = g_strdup_printf("unix:%s", sock);
    g_autofree char *incoming =
        g_strdup_printf(" -action panic=pause -incoming %s", uri);
    PvPanicPci src, dst;
    uint32_t bar0, cmd;
    QDict *rsp;
    const char *status;

    start(&src, machine, "");
    bar0 = qpci_config_readl(src.dev, PCI_BASE_ADDRESS_0);
    cmd = qpci_config_readw(src.dev, PCI_COMMAND);
    g_assert_true(cmd & PCI_COMMAND_MEMORY);

    dst.qts = qtest_initf("-M %s -device pvpanic-pci,addr=04.0%s",
                          (const char *)machine,
                          incoming);
    rsp = qtest_qmp(src.qts, "{'execute': 'migrate', 'arguments': "
                    "{'uri': %s}}", uri);
    g_assert_false(qdict_haskey(rsp, "error"));
    qobject_unref(rsp);
    do {
        g_usleep(20000);
        rsp = qtest_qmp(src.qts, "{'execute': 'query-migrate'}");
        status = qdict_get_try_str(qdict_get_qdict(rsp, "return"), "status");
        g_assert_cmpstr(status, !=, "failed");
        if (g_str_equal(status, "completed")) {
            qobject_unref(rsp);
            break;
        }
        qobject_unref(rsp);
    } while (true);
    qtest_qmp_eventwait(dst.qts, "RESUME");

    dst.bus = qpci_new_pc(dst.qts, NULL);
    dst.dev = qpci_device_find(dst.bus, DEVFN);
    g_assert_nonnull(dst.dev);
    g_assert_cmphex(qpci_config_readl(dst.dev, PCI_BASE_ADDRESS_0), ==, bar0);
    g_assert_cmphex(qpci_config_readw(dst.dev, PCI_COMMAND), ==, cmd);
    dst.bar = src.bar;
    g_assert_cmphex(bar_readb(&dst, 0), ==, PVPANIC_EVENTS);
    bar_writeb(&dst, 0, PVPANIC_PANICKED);
    vigil_expect_action(dst.qts, "GUEST_PANICKED", "pause");

    g_free(dst.dev);
    qpci_free_pc(dst.bus);
    qtest_quit(dst.qts);
    stop(&src);
    unlink(sock);
}

/* device_add, then ACPI hot unplug on pc, twice: the device comes and goes */
static void test_hotplug(void)
{
    QTestState *qts = qtest_init("-M pc");

    for (int i = 0; i < 2; i++) {
        QPCIBus *bus;
        QPCIDevice *dev;
        QPCIBar bar;

        qtest_qmp_device_add(qts, "pvpanic-pci", "hp", "{'addr': '06.0'}");
        bus = qpci_new_pc(qts, NULL);
        dev = qpci_device_find(bus, QPCI_DEVFN(6, 0));
        g_assert_nonnull(dev);
        g_assert_cmphex(qpci_config_readw(dev, PCI_DEVICE_ID), ==, 0x0011);
        qpci_device_enable(dev);
        bar = qpci_iomap(dev, 0, NULL);
        g_assert_cmphex(qpci_io_readb(dev, bar, 0), ==, PVPANIC_EVENTS);
        g_free(dev);
        qpci_free_pc(bus);
        qpci_unplug_acpi_device_test(qts, "hp", 6);
    }
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    static const char *const machines[] = { "pc", "q35" };

    g_test_init(&argc, &argv, NULL);
    for (int i = 0; i < ARRAY_SIZE(machines); i++) {
        const char *m = machines[i];

#define ADD(name, fn) do { \
            g_autofree char *path = \
                g_strdup_printf("/pvpanic-pci-rust/%s/" name, m); \
            qtest_add_data_func(path, m, fn); \
        } while (0)
        ADD("config-space", test_config_space);
        ADD("bars", test_bars);
        ADD("reads", test_reads);
        ADD("panicked", test_panicked);
        ADD("crash-loaded", test_crash_loaded);
        ADD("pvshutdown", test_pvshutdown);
        ADD("hostile-writes", test_hostile_writes);
        ADD("migration", test_migration);
#undef ADD
    }
    qtest_add_func("/pvpanic-pci-rust/pc/hotplug", test_hotplug);
    return g_test_run();
}
