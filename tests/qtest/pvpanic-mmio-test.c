/*
 * QTest for pvpanic-mmio on the arm virt machine
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "vigil-qtest.h"
#include "standard-headers/misc/pvpanic.h"

#define PVPANIC_EVENTS \
    (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN)

/* First device on virt's platform bus */
#define BASE 0x0c000000ULL

static void test_read(void)
{
    QTestState *qts = qtest_init("-M virt -device pvpanic-mmio");

    /* The C device's default: panicked and crash loaded, no shutdown */
    g_assert_cmphex(qtest_readb(qts, BASE), ==,
                    PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
    qtest_quit(qts);

    qts = qtest_init("-M virt -device pvpanic-mmio,events=7");
    g_assert_cmphex(qtest_readb(qts, BASE), ==, PVPANIC_EVENTS);
    qtest_quit(qts);
}

static void test_panicked(void)
{
    QTestState *qts = qtest_init("-M virt -device pvpanic-mmio "
                                 "-action panic=pause");

    qtest_writeb(qts, BASE, PVPANIC_PANICKED);
    vigil_expect_action(qts, "GUEST_PANICKED", "pause");
    qtest_quit(qts);
}

static void test_crash_loaded(void)
{
    QTestState *qts = qtest_init("-M virt -device pvpanic-mmio");

    qtest_writeb(qts, BASE, PVPANIC_CRASH_LOADED);
    vigil_expect_action(qts, "GUEST_CRASHLOADED", "run");
    qtest_quit(qts);
}

static void test_shutdown(void)
{
    QTestState *qts = qtest_init("-M virt -device pvpanic-mmio,events=7");
    QDict *ev;

    qtest_writeb(qts, BASE, PVPANIC_SHUTDOWN);
    qobject_unref(qtest_qmp_eventwait_ref(qts, "GUEST_PVSHUTDOWN"));
    ev = qtest_qmp_eventwait_ref(qts, "SHUTDOWN");
    g_assert_true(qdict_get_bool(qdict_get_qdict(ev, "data"), "guest"));
    qobject_unref(ev);
    qtest_quit(qts);
}

static void test_second_byte(void)
{
    /* The region is two bytes, the second behaves as the first */
    QTestState *qts = qtest_init("-M virt -device pvpanic-mmio "
                                 "-action panic=none");

    g_assert_cmphex(qtest_readb(qts, BASE + 1), ==,
                    PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
    qtest_writeb(qts, BASE + 1, PVPANIC_PANICKED);
    vigil_expect_action(qts, "GUEST_PANICKED", "run");
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    qtest_add_func("/pvpanic-mmio/read", test_read);
    qtest_add_func("/pvpanic-mmio/panicked", test_panicked);
    qtest_add_func("/pvpanic-mmio/crash-loaded", test_crash_loaded);
    qtest_add_func("/pvpanic-mmio/shutdown", test_shutdown);
    qtest_add_func("/pvpanic-mmio/second-byte", test_second_byte);

    return g_test_run();
}
