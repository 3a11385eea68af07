/*
 * QTest for the ISA pvpanic device, beyond QEMU's own pvpanic-test:
 * CRASH_LOADED, the events mask, multi-bit and unknown writes, reads of
 * every width, a custom port, the fw_cfg file and the 5.1 compat machine.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "vigil-qtest.h"
#include "libqos/fw_cfg.h"
#include "qemu/bswap.h"
#include "standard-headers/misc/pvpanic.h"

#define PVPANIC_EVENTS \
    (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN)

#define PORT 0x505

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

static void test_crash_loaded(void)
{
    QTestState *qts = qtest_init("-device pvpanic");

    qtest_outb(qts, PORT, PVPANIC_CRASH_LOADED);
    vigil_expect_action(qts, "GUEST_CRASHLOADED", "run");
    /* The guest keeps running */
    g_assert_null(vigil_event_so_far(qts, "STOP"));
    qtest_quit(qts);
}

static void test_reads(void)
{
    QTestState *qts = qtest_init("-device pvpanic");

    g_assert_cmphex(qtest_inb(qts, PORT), ==, PVPANIC_EVENTS);
    /* The port is one byte: wider reads see it once, the rest unassigned */
    g_assert_cmphex(qtest_inw(qts, PORT) & 0xff, ==, PVPANIC_EVENTS);
    g_assert_cmphex(qtest_inl(qts, PORT) & 0xff, ==, PVPANIC_EVENTS);
    qtest_quit(qts);
}

static void test_priority(void)
{
    QTestState *qts = qtest_init("-device pvpanic -action panic=none");

    /* The first known bit wins: panicked, crash loaded, shutdown */
    qtest_outb(qts, PORT, PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
    vigil_expect_action(qts, "GUEST_PANICKED", "run");
    assert_no_guest_event(qts);

    qtest_outb(qts, PORT, PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN);
    vigil_expect_action(qts, "GUEST_CRASHLOADED", "run");
    assert_no_guest_event(qts);
    qtest_quit(qts);
}

static void test_unknown_bits(void)
{
    QTestState *qts = qtest_init("-device pvpanic -action panic=none");

    /* Unknown bits alone do nothing (they are logged, once) */
    qtest_outb(qts, PORT, 0x80);
    qtest_outb(qts, PORT, 0xf8);
    qtest_outb(qts, PORT, 0);
    assert_no_guest_event(qts);

    /* Known bits still act beside unknown ones */
    qtest_outb(qts, PORT, 0x80 | PVPANIC_CRASH_LOADED);
    vigil_expect_action(qts, "GUEST_CRASHLOADED", "run");
    qtest_quit(qts);
}

static void test_events_mask(void)
{
    QTestState *qts = qtest_init("-device pvpanic,events=1");
    QDict *ev;

    /* The mask is what the guest reads ... */
    g_assert_cmphex(qtest_inb(qts, PORT), ==, PVPANIC_PANICKED);

    /*
     * ... but, as with QEMU's C device, not a filter: a guest that writes
     * an event it was not offered still gets it handled.
     */
    qtest_outb(qts, PORT, PVPANIC_CRASH_LOADED);
    vigil_expect_action(qts, "GUEST_CRASHLOADED", "run");
    qtest_outb(qts, PORT, PVPANIC_SHUTDOWN);
    qobject_unref(qtest_qmp_eventwait_ref(qts, "GUEST_PVSHUTDOWN"));
    ev = qtest_qmp_eventwait_ref(qts, "SHUTDOWN");
    g_assert_true(qdict_get_bool(qdict_get_qdict(ev, "data"), "guest"));
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "reason"),
                    ==, "guest-shutdown");
    qobject_unref(ev);
    qtest_quit(qts);
}

static void test_custom_port(void)
{
    QTestState *qts = qtest_init("-device pvpanic,ioport=0x600 "
                                 "-action panic=pause");
    QFWCFG *fw_cfg = pc_fw_cfg_init(qts);
    uint16_t port = 0;

    g_assert_cmphex(qtest_inb(qts, 0x600), ==, PVPANIC_EVENTS);
    g_assert_cmphex(qtest_inb(qts, PORT), ==, 0xff);    /* nothing there */

    /* The firmware learns the port from fw_cfg, little endian */
    g_assert_cmpuint(qfw_cfg_get_file(fw_cfg, "etc/pvpanic-port", &port,
                                      sizeof(port)), ==, sizeof(port));
    g_assert_cmphex(le16_to_cpu(port), ==, 0x600);
    pc_fw_cfg_uninit(fw_cfg);

    qtest_outb(qts, 0x600, PVPANIC_PANICKED);
    vigil_expect_action(qts, "GUEST_PANICKED", "pause");
    qtest_quit(qts);
}

static void test_compat_5_1(void)
{
    /* hw_compat_5_1: machines up to 5.1 advertise "panicked" only */
    QTestState *qts = qtest_init("-M pc-i440fx-5.1 -device pvpanic");

    g_assert_cmphex(qtest_inb(qts, PORT), ==, PVPANIC_PANICKED);
    qtest_quit(qts);

    qts = qtest_init("-M pc-i440fx-5.2 -device pvpanic");
    g_assert_cmphex(qtest_inb(qts, PORT), ==, PVPANIC_EVENTS);
    qtest_quit(qts);
}

static void test_libvirt_command_line(void)
{
    /* What libvirt 9 passes for <panic model='isa'/> */
    QTestState *qts = qtest_init("-no-shutdown "
                                 "-device '{\"driver\":\"pvpanic\","
                                 "\"ioport\":1285}'");

    g_assert_cmphex(qtest_inb(qts, PORT), ==, PVPANIC_EVENTS);
    qtest_outb(qts, PORT, PVPANIC_PANICKED);
    /* With -no-shutdown the default panic action pauses the guest */
    vigil_expect_action(qts, "GUEST_PANICKED", "pause");
    qtest_quit(qts);
}

/*
 * The C device accepts any events value and advertises it as given: so does
 * ours (with a warning), so that -global pvpanic.events=15 keeps working.
 */
static void test_events_compat_values(void)
{
    static const uint8_t values[] = { 0, 1, 3, 7, 15, 0xff };

    for (int i = 0; i < ARRAY_SIZE(values); i++) {
        QTestState *qts = qtest_initf("-global pvpanic.events=%u "
                                      "-device pvpanic -action panic=none",
                                      values[i]);

        g_assert_cmphex(qtest_inb(qts, PORT), ==, values[i]);
        /* Known bits act whatever is advertised, as in C */
        qtest_outb(qts, PORT, PVPANIC_PANICKED);
        qobject_unref(qtest_qmp_eventwait_ref(qts, "GUEST_PANICKED"));
        qtest_quit(qts);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    qtest_add_func("/vigil-pvpanic/crash-loaded", test_crash_loaded);
    qtest_add_func("/vigil-pvpanic/reads", test_reads);
    qtest_add_func("/vigil-pvpanic/priority", test_priority);
    qtest_add_func("/vigil-pvpanic/unknown-bits", test_unknown_bits);
    qtest_add_func("/vigil-pvpanic/events-mask", test_events_mask);
    qtest_add_func("/vigil-pvpanic/events-compat-values",
                   test_events_compat_values);
    qtest_add_func("/vigil-pvpanic/custom-port", test_custom_port);
    qtest_add_func("/vigil-pvpanic/compat-5.1", test_compat_5_1);
    qtest_add_func("/vigil-pvpanic/libvirt-command-line",
                   test_libvirt_command_line);

    return g_test_run();
}
