/*
 * QTest for the vcpu-stall-detector device on the arm virt machine
 *
 * The device counts QEMU_CLOCK_VIRTUAL (clock=virtual) here, so clock_step
 * drives its countdowns deterministically.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "vigil-qtest.h"

/* First device on virt's platform bus */
#define BASE            0x0c000000ULL
#define BANK(cpu)       (BASE + (cpu) * 0x10)
#define STATUS          0x0
#define LOAD_CNT        0x4
#define CURRENT_CNT     0x8
#define CLOCK_FREQ_HZ   0xc

#define NS_PER_MS       1000000LL
#define NS_PER_SEC      1000000000LL
#define QOM_PATH        "/machine/peripheral/sd"

static QTestState *start_smp(int cpus, const char *extra)
{
    return qtest_initf("-machine virt -smp %d "
                       "-device vcpu-stall-detector,id=sd,clock=virtual%s",
                       cpus, extra ? extra : "");
}

static QTestState *start(const char *extra)
{
    return start_smp(2, extra);
}

static void wr(QTestState *qts, int cpu, int reg, uint32_t val)
{
    qtest_writel(qts, BANK(cpu) + reg, val);
}

static uint32_t rd(QTestState *qts, int cpu, int reg)
{
    return qtest_readl(qts, BANK(cpu) + reg);
}

/* The Linux driver's start sequence: clock, count, enable */
static void arm_bank(QTestState *qts, int cpu, uint32_t hz, uint32_t ticks)
{
    wr(qts, cpu, CLOCK_FREQ_HZ, hz);
    wr(qts, cpu, LOAD_CNT, ticks);
    wr(qts, cpu, STATUS, 1);
}

static void assert_no_stall_yet(QTestState *qts)
{
    QDict *ev = vigil_event_so_far(qts, "VCPU_STALL");

    g_assert_null(ev);
}

static void check_stall(QDict *ev, int cpu, uint64_t budget_ms,
                        const char *stage)
{
    QDict *data;

    g_assert_nonnull(ev);
    data = qdict_get_qdict(ev, "data");
    g_assert_cmpstr(qdict_get_str(data, "qom-path"), ==, QOM_PATH);
    g_assert_cmpint(qdict_get_int(data, "cpu-index"), ==, cpu);
    /* qtest accesses come from no vCPU: bank N counts for vCPU N */
    g_assert_cmpint(qdict_get_int(data, "bank"), ==, cpu);
    g_assert_cmpuint(qdict_get_uint(data, "budget-ms"), ==, budget_ms);
    g_assert_cmpstr(qdict_get_str(data, "stage"), ==, stage);
    qobject_unref(ev);
}

static void test_registers(void)
{
    QTestState *qts = start(NULL);

    /* Reset values */
    for (int cpu = 0; cpu < 2; cpu++) {
        for (int reg = 0; reg < 0x10; reg += 4) {
            g_assert_cmphex(rd(qts, cpu, reg), ==, 0);
        }
    }

    /* Every register reads back; banks are independent */
    wr(qts, 0, CLOCK_FREQ_HZ, 10);
    wr(qts, 0, LOAD_CNT, 80);
    wr(qts, 1, CLOCK_FREQ_HZ, 25);
    wr(qts, 1, LOAD_CNT, 0x12345678);
    g_assert_cmpuint(rd(qts, 0, CLOCK_FREQ_HZ), ==, 10);
    g_assert_cmpuint(rd(qts, 0, LOAD_CNT), ==, 80);
    g_assert_cmpuint(rd(qts, 1, CLOCK_FREQ_HZ), ==, 25);
    g_assert_cmphex(rd(qts, 1, LOAD_CNT), ==, 0x12345678);
    g_assert_cmpuint(rd(qts, 0, STATUS), ==, 0);
    /* Disabled: nothing counts */
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 0);

    wr(qts, 0, STATUS, 1);
    g_assert_cmpuint(rd(qts, 0, STATUS), ==, 1);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 80);

    /* CURRENT_CNT follows the clock, in ticks rounded up */
    qtest_clock_step(qts, 3 * NS_PER_SEC);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 50);
    qtest_clock_step(qts, 50 * NS_PER_MS);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 50);
    qtest_clock_step(qts, 50 * NS_PER_MS);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 49);
    g_assert_cmpuint(rd(qts, 1, CURRENT_CNT), ==, 0);

    /* A reload refills */
    wr(qts, 0, LOAD_CNT, 80);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 80);

    /* CURRENT_CNT is read-only */
    wr(qts, 0, CURRENT_CNT, 5);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 80);

    /* Disable stops the bank */
    wr(qts, 0, STATUS, 0);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 0);
    g_assert_cmpuint(rd(qts, 0, LOAD_CNT), ==, 80);

    qtest_quit(qts);
}

static void test_warning_then_action(void)
{
    QTestState *qts = start(" -action watchdog=none");

    arm_bank(qts, 1, 10, 10);               /* 1 s on CPU 1 */
    qtest_clock_step(qts, NS_PER_SEC - 1);
    assert_no_stall_yet(qts);

    qtest_clock_step(qts, 1);
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 1, 1000, "warning");
    g_assert_null(vigil_event_so_far(qts, "WATCHDOG"));

    /* One more budget without a reload: the action */
    qtest_clock_step(qts, NS_PER_SEC);
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 1, 1000, "action");
    vigil_expect_action(qts, "WATCHDOG", "none");

    /* After the action the bank waits for the guest: no more events */
    qtest_clock_step(qts, 10 * NS_PER_SEC);
    assert_no_stall_yet(qts);

    /* A reload starts a new countdown */
    wr(qts, 1, LOAD_CNT, 10);
    qtest_clock_step(qts, NS_PER_SEC);
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 1, 1000, "warning");

    qtest_quit(qts);
}

static void test_immediate_action_pause(void)
{
    QTestState *qts = start(",immediate-action=on -action watchdog=pause");

    arm_bank(qts, 0, 1, 2);                 /* 2 s at 1 Hz */
    qtest_clock_step(qts, 2 * NS_PER_SEC);
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 0, 2000, "action");
    vigil_expect_action(qts, "WATCHDOG", "pause");
    qobject_unref(qtest_qmp_eventwait_ref(qts, "STOP"));

    qtest_quit(qts);
}

static void test_reset_action(void)
{
    QTestState *qts = start(",immediate-action=on");

    /* The default watchdog action resets the machine, which clears banks */
    arm_bank(qts, 0, 10, 5);
    qtest_clock_step(qts, 500 * NS_PER_MS);
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 0, 500, "action");
    qobject_unref(qtest_qmp_eventwait_ref(qts, "RESET"));
    g_assert_cmpuint(rd(qts, 0, STATUS), ==, 0);
    g_assert_cmpuint(rd(qts, 0, LOAD_CNT), ==, 0);

    qtest_quit(qts);
}

/*
 * Every watchdog action, through QEMU's watchdog framework. "poweroff"
 * exits QEMU from within the clock_step that fires the timer, before
 * libqtest gets its answer: scripts/cli-tests.sh checks it with a guest.
 */
static void test_each_action(void)
{
    static const struct {
        const char *action;
        const char *then;       /* the event that follows WATCHDOG */
    } cases[] = {
        { "reset", "RESET" },
        { "shutdown", "POWERDOWN" },    /* asks the guest to power off */
        { "pause", "STOP" },
        { "debug", NULL },              /* only a message on stderr */
        { "none", NULL },
        /* inject-nmi: refused at realize on virt (no NMI), see below */
    };

    for (int i = 0; i < ARRAY_SIZE(cases); i++) {
        g_autofree char *args = g_strdup_printf(",immediate-action=on "
                                                "-action watchdog=%s",
                                                cases[i].action);
        QTestState *qts = start(args);

        arm_bank(qts, 1, 10, 1);
        qtest_clock_step(qts, 100 * NS_PER_MS);
        check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 1, 100,
                    "action");
        vigil_expect_action(qts, "WATCHDOG", cases[i].action);
        if (cases[i].then) {
            qobject_unref(qtest_qmp_eventwait_ref(qts, cases[i].then));
        }
        qtest_quit(qts);
    }
}

/* The action can be changed at run time, as for any watchdog */
static void test_set_action_at_run_time(void)
{
    QTestState *qts = start(",immediate-action=on");

    qtest_qmp_assert_success(qts, "{'execute': 'watchdog-set-action',"
                             " 'arguments': { 'action': 'pause' } }");
    arm_bank(qts, 0, 10, 1);
    qtest_clock_step(qts, 100 * NS_PER_MS);
    qobject_unref(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"));
    vigil_expect_action(qts, "WATCHDOG", "pause");
    qtest_quit(qts);
}

static void test_pet_keeps_quiet(void)
{
    QTestState *qts = start(" -action watchdog=none");

    arm_bank(qts, 0, 10, 80);
    arm_bank(qts, 1, 10, 80);
    for (int i = 0; i < 20; i++) {
        /* The driver reloads every timeout / 2 */
        qtest_clock_step(qts, 4 * NS_PER_SEC);
        wr(qts, 0, LOAD_CNT, 80);
        wr(qts, 1, LOAD_CNT, 80);
    }
    assert_no_stall_yet(qts);

    /* CPU 0 stops petting: only CPU 0 is reported */
    for (int i = 0; i < 2; i++) {
        qtest_clock_step(qts, 4 * NS_PER_SEC);
        wr(qts, 1, LOAD_CNT, 80);
    }
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 0, 8000, "warning");
    assert_no_stall_yet(qts);

    qtest_quit(qts);
}

static void test_ppi(void)
{
    QTestState *qts = start(" -action watchdog=none");

    qtest_irq_intercept_out(qts, QOM_PATH);
    arm_bank(qts, 1, 10, 10);
    qtest_clock_step(qts, NS_PER_SEC);
    qobject_unref(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"));
    g_assert_true(qtest_get_irq(qts, 1));
    g_assert_false(qtest_get_irq(qts, 0));

    /* A reload lowers it */
    wr(qts, 1, LOAD_CNT, 10);
    g_assert_false(qtest_get_irq(qts, 1));

    /* So does disabling, after another expiry */
    qtest_clock_step(qts, NS_PER_SEC);
    qobject_unref(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"));
    g_assert_true(qtest_get_irq(qts, 1));
    wr(qts, 1, STATUS, 0);
    g_assert_false(qtest_get_irq(qts, 1));

    qtest_quit(qts);
}

static void test_system_reset(void)
{
    QTestState *qts = start(NULL);

    arm_bank(qts, 0, 10, 10);
    arm_bank(qts, 1, 20, 30);
    qtest_qmp_assert_success(qts, "{'execute': 'system_reset'}");
    qobject_unref(qtest_qmp_eventwait_ref(qts, "RESET"));
    for (int cpu = 0; cpu < 2; cpu++) {
        for (int reg = 0; reg < 0x10; reg += 4) {
            g_assert_cmphex(rd(qts, cpu, reg), ==, 0);
        }
    }
    /* The countdowns died with the reset */
    qtest_clock_step(qts, 10 * NS_PER_SEC);
    assert_no_stall_yet(qts);

    qtest_quit(qts);
}

static void test_disabled_never_fires(void)
{
    QTestState *qts = start(NULL);

    wr(qts, 0, CLOCK_FREQ_HZ, 10);
    wr(qts, 0, LOAD_CNT, 1);
    wr(qts, 1, CLOCK_FREQ_HZ, 10);
    wr(qts, 1, LOAD_CNT, 1);
    wr(qts, 1, STATUS, 1);
    wr(qts, 1, STATUS, 0);
    qtest_clock_step(qts, 100 * NS_PER_SEC);
    assert_no_stall_yet(qts);

    qtest_quit(qts);
}

/* Migrates @src to @dst (started with -incoming @uri) and waits for it */
static void migrate(QTestState *src, QTestState *dst, const char *uri)
{
    QDict *rsp;
    const char *status;

    qtest_qmp_assert_success(src, "{'execute': 'migrate',"
                             " 'arguments': { 'uri': %s } }", uri);
    do {
        g_usleep(20 * 1000);
        rsp = qtest_qmp(src, "{'execute': 'query-migrate'}");
        status = qdict_get_try_str(qdict_get_qdict(rsp, "return"), "status");
        g_assert_cmpstr(status, !=, "failed");
        if (g_str_equal(status, "completed")) {
            qobject_unref(rsp);
            break;
        }
        qobject_unref(rsp);
    } while (true);
    qtest_qmp_eventwait(dst, "RESUME");
}

static void test_migration_keeps_budget(void)
{
    g_autofree char *dir = g_dir_make_tmp("stall-mig-XXXXXX", NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s/mig.sock", dir);
    g_autofree char *sock = g_strdup_printf("%s/mig.sock", dir);
    g_autofree char *incoming = g_strdup_printf(" -action watchdog=none"
                                                " -incoming %s", uri);
    QTestState *src = start(" -action watchdog=none");
    QTestState *dst = start(incoming);

    arm_bank(src, 1, 10, 10);               /* 1 s */
    wr(src, 0, CLOCK_FREQ_HZ, 7);           /* an idle bank keeps its values */
    qtest_clock_step(src, 400 * NS_PER_MS);
    g_assert_cmpuint(rd(src, 1, CURRENT_CNT), ==, 6);

    migrate(src, dst, uri);

    /* Neither refilled nor expired: 600 ms of the budget are left */
    g_assert_cmpuint(rd(dst, 1, STATUS), ==, 1);
    g_assert_cmpuint(rd(dst, 1, LOAD_CNT), ==, 10);
    g_assert_cmpuint(rd(dst, 1, CURRENT_CNT), ==, 6);
    g_assert_cmpuint(rd(dst, 0, CLOCK_FREQ_HZ), ==, 7);
    g_assert_cmpuint(rd(dst, 0, CURRENT_CNT), ==, 0);
    qtest_clock_step(dst, 600 * NS_PER_MS - 1);
    assert_no_stall_yet(dst);
    qtest_clock_step(dst, 1);
    check_stall(qtest_qmp_eventwait_ref(dst, "VCPU_STALL"), 1, 1000, "warning");

    qtest_quit(src);
    qtest_quit(dst);
    unlink(sock);
    rmdir(dir);
}

static void test_qom_state(void)
{
    QTestState *qts = start(" -action watchdog=none");
    QDict *rsp;

    arm_bank(qts, 1, 10, 10);
    qtest_clock_step(qts, 300 * NS_PER_MS);
    rsp = qtest_qmp(qts, "{'execute': 'qom-get', 'arguments':"
                    " { 'path': %s, 'property': 'cpu1-enabled' } }", QOM_PATH);
    g_assert_true(qdict_get_bool(rsp, "return"));
    qobject_unref(rsp);
    rsp = qtest_qmp(qts, "{'execute': 'qom-get', 'arguments':"
                    " { 'path': %s, 'property': 'cpu0-enabled' } }", QOM_PATH);
    g_assert_false(qdict_get_bool(rsp, "return"));
    qobject_unref(rsp);
    rsp = qtest_qmp(qts, "{'execute': 'qom-get', 'arguments':"
                    " { 'path': %s, 'property': 'cpu1-remaining-ticks' } }",
                    QOM_PATH);
    g_assert_cmpint(qdict_get_int(rsp, "return"), ==, 7);
    qobject_unref(rsp);

    qtest_clock_step(qts, 2 * NS_PER_SEC);  /* warning and action */
    rsp = qtest_qmp(qts, "{'execute': 'qom-get', 'arguments':"
                    " { 'path': %s, 'property': 'cpu1-stalls' } }", QOM_PATH);
    g_assert_cmpint(qdict_get_int(rsp, "return"), ==, 2);
    qobject_unref(rsp);

    qtest_quit(qts);
}

static void test_hostile_input(void)
{
    QTestState *qts = start(" -action watchdog=none");

    /* Sizes other than 32 bits, and misaligned offsets, are ignored */
    qtest_writeb(qts, BANK(0) + CLOCK_FREQ_HZ, 7);
    qtest_writew(qts, BANK(0) + CLOCK_FREQ_HZ, 7);
    qtest_writeq(qts, BANK(0) + CLOCK_FREQ_HZ, 7);
    qtest_writel(qts, BANK(0) + CLOCK_FREQ_HZ + 1, 7);
    qtest_writel(qts, BANK(0) + 2, 1);
    g_assert_cmpuint(rd(qts, 0, CLOCK_FREQ_HZ), ==, 0);
    g_assert_cmpuint(qtest_readb(qts, BANK(0) + CLOCK_FREQ_HZ), ==, 0);
    g_assert_cmpuint(qtest_readq(qts, BANK(0)), ==, 0);
    g_assert_cmpuint(qtest_readl(qts, BANK(0) + 3), ==, 0);

    /* Enabling before any clock rate: stays idle, no division by zero */
    wr(qts, 0, STATUS, 1);
    wr(qts, 0, LOAD_CNT, 10);
    g_assert_cmpuint(rd(qts, 0, CURRENT_CNT), ==, 0);
    wr(qts, 0, CLOCK_FREQ_HZ, 0);
    wr(qts, 0, STATUS, 1);
    qtest_clock_step(qts, 10 * NS_PER_SEC);
    assert_no_stall_yet(qts);

    /* Huge count: no overflow, counts down */
    wr(qts, 0, CLOCK_FREQ_HZ, 1);
    wr(qts, 0, LOAD_CNT, 0xffffffff);
    wr(qts, 0, STATUS, 1);
    qtest_clock_step(qts, 10 * NS_PER_SEC);
    g_assert_cmphex(rd(qts, 0, CURRENT_CNT), ==, 0xffffffff - 10);

    /* Huge clock rate and a zero count: expires once, no timer storm */
    wr(qts, 1, CLOCK_FREQ_HZ, 0xffffffff);
    wr(qts, 1, LOAD_CNT, 0);
    wr(qts, 1, STATUS, 0xffffffff);        /* reserved bits: logged */
    qtest_clock_step(qts, 2 * NS_PER_MS);
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 1, 0, "warning");

    /* Past the last bank, in the rest of the device's page: ignored */
    qtest_writel(qts, BANK(2), 1);
    g_assert_cmpuint(qtest_readl(qts, BANK(2)), ==, 0);
    qtest_writel(qts, BASE + 0xffc, 1);
    g_assert_cmpuint(qtest_readl(qts, BASE + 0xffc), ==, 0);

    /* Still alive and sane */
    g_assert_cmpuint(rd(qts, 0, STATUS), ==, 1);
    qtest_quit(qts);
}

/*
 * inject-nmi does nothing on virt: refused at start-up (scripts/cli-tests.sh);
 * switched to at run time it is still reported, and the device warns.
 */
static void test_inject_nmi_at_run_time(void)
{
    QTestState *qts = start(",immediate-action=on -action watchdog=none");

    qtest_qmp_assert_success(qts, "{'execute': 'watchdog-set-action',"
                             " 'arguments': { 'action': 'inject-nmi' } }");
    arm_bank(qts, 1, 10, 1);
    qtest_clock_step(qts, 100 * NS_PER_MS);
    check_stall(qtest_qmp_eventwait_ref(qts, "VCPU_STALL"), 1, 100, "action");
    vigil_expect_action(qts, "WATCHDOG", "inject-nmi");
    qtest_quit(qts);
}

/* Every event a test receives, counted as it arrives */
#define COUNT_BANKS 4
typedef struct EventCounts {
    int stall[COUNT_BANKS];     /* VCPU_STALL per bank */
    int warning, action, ongoing, watchdog, stop, reset, powerdown;
} EventCounts;

static bool count_event(QTestState *qts, const char *name, QDict *ev,
                        void *opaque)
{
    EventCounts *c = opaque;

    if (g_str_equal(name, "VCPU_STALL")) {
        QDict *data = qdict_get_qdict(ev, "data");
        const char *stage = qdict_get_str(data, "stage");
        int bank = qdict_get_int(data, "bank");

        g_assert_cmpint(bank, >=, 0);
        g_assert_cmpint(bank, <, COUNT_BANKS);
        g_assert_cmpint(qdict_get_int(data, "cpu-index"), ==, bank);
        c->stall[bank]++;
        if (g_str_equal(stage, "warning")) {
            c->warning++;
        } else if (g_str_equal(stage, "action")) {
            c->action++;
        } else {
            g_assert_cmpstr(stage, ==, "ongoing");
            c->ongoing++;
        }
    } else if (g_str_equal(name, "WATCHDOG")) {
        c->watchdog++;
    } else if (g_str_equal(name, "STOP")) {
        c->stop++;
    } else if (g_str_equal(name, "RESET")) {
        c->reset++;
    } else if (g_str_equal(name, "POWERDOWN")) {
        c->powerdown++;
    }
    return false;       /* keep it for qtest_qmp_eventwait() too */
}

/* Receives every event QEMU sent so far (a QMP round trip) */
static void flush_events(QTestState *qts)
{
    qtest_qmp_assert_success(qts, "{'execute': 'query-status'}");
}

/* Receives events until *@count reaches @n (a run-state change is async) */
static void wait_count(QTestState *qts, const int *count, int n)
{
    for (int i = 0; i < 500 && *count < n; i++) {
        flush_events(qts);
        if (*count < n) {
            g_usleep(10 * 1000);
        }
    }
    g_assert_cmpint(*count, >=, n);
}

static int sum(const int *v, int n)
{
    int total = 0;

    for (int i = 0; i < n; i++) {
        total += v[i];
    }
    return total;
}

/*
 * A hostile guest: every bank with LOAD_CNT 0, rewritten whenever it ran
 * out (warning after 1 ms, action stage after 2 ms), for 2 s. Unthrottled
 * that is 8000 events; QEMU's monitor lets through one a second per
 * device, vCPU, bank and stage, and the device takes the action at most
 * once a second.
 */
static void test_event_flood_is_throttled(void)
{
    enum { CPUS = COUNT_BANKS, ROUNDS = 1000 };
    QTestState *qts = start_smp(CPUS, " -action watchdog=none");
    EventCounts c = { 0 };
    int events;

    qtest_qmp_set_event_callback(qts, count_event, &c);
    for (int cpu = 0; cpu < CPUS; cpu++) {
        arm_bank(qts, cpu, 10, 0);
    }
    for (int i = 0; i < ROUNDS; i++) {
        qtest_clock_step(qts, 2 * NS_PER_MS);
        for (int cpu = 0; cpu < CPUS; cpu++) {
            wr(qts, cpu, LOAD_CNT, 0);
        }
    }
    /* Let the last throttled events out */
    qtest_clock_step(qts, 2 * NS_PER_SEC);
    flush_events(qts);
    events = sum(c.stall, CPUS);
    g_test_message("hostile loop, %d banks, 2 s: %d VCPU_STALL events "
                   "(%d warning, %d action, %d ongoing) of %d expiries; "
                   "%d WATCHDOG", CPUS, events, c.warning, c.action,
                   c.ongoing, 2 * CPUS * ROUNDS, c.watchdog);
    /*
     * At most one a second per bank and stage (warning, action, ongoing),
     * over 2 s of flood and the trailing ones: 4 each
     */
    g_assert_cmpint(events, <=, CPUS * 3 * 4);
    for (int cpu = 0; cpu < CPUS; cpu++) {
        g_assert_cmpint(c.stall[cpu], >=, 2);  /* every bank reported */
    }
    /* Actions at most once a second: at 2 ms, 1.002 s, 2.002 s */
    g_assert_cmpint(c.watchdog, ==, 3);
    g_assert_cmpint(c.action, ==, 3);

    /* The device still works normally afterwards */
    memset(&c, 0, sizeof(c));
    for (int cpu = 0; cpu < CPUS; cpu++) {
        wr(qts, cpu, STATUS, 0);
    }
    arm_bank(qts, 1, 10, 10);
    qtest_clock_step(qts, NS_PER_SEC - 1);
    flush_events(qts);
    g_assert_cmpint(sum(c.stall, CPUS), ==, 0);
    qtest_clock_step(qts, 1);
    flush_events(qts);
    g_assert_cmpint(c.stall[1], ==, 1);
    g_assert_cmpint(c.warning, ==, 1);
    qtest_quit(qts);
}

/*
 * One hang, one action: four vCPUs stall together, a little apart (the
 * lock holder first, then its waiters). Every vCPU is reported, the action
 * is taken once; the episode ends when every bank was reloaded (or at a
 * reset), and the next hang acts again.
 */
static void test_one_hang_one_action(void)
{
    static const struct {
        const char *action;
        int stop, reset, powerdown;     /* what the action causes */
    } cases[] = {
        { "pause", 1, 0, 0 },
        { "reset", 0, 1, 0 },
        { "none", 0, 0, 0 },
        { "shutdown", 0, 0, 1 },
    };
    enum { CPUS = COUNT_BANKS };

    for (int i = 0; i < ARRAY_SIZE(cases); i++) {
        g_autofree char *args = g_strdup_printf(" -action watchdog=%s",
                                                cases[i].action);
        QTestState *qts = start_smp(CPUS, args);
        bool pause = g_str_equal(cases[i].action, "pause");
        bool reset = g_str_equal(cases[i].action, "reset");
        EventCounts c = { 0 };

        g_test_message("action %s", cases[i].action);
        qtest_qmp_set_event_callback(qts, count_event, &c);
        /* 1 s budgets; CPU 0 stalls first, the others 300 ms later */
        arm_bank(qts, 0, 10, 10);
        qtest_clock_step(qts, 300 * NS_PER_MS);
        for (int cpu = 1; cpu < CPUS; cpu++) {
            arm_bank(qts, cpu, 10, 10);
        }
        /* Warnings at 1 s / 1.3 s; action stages at 2 s / 2.3 s */
        qtest_clock_step(qts, 1700 * NS_PER_MS);
        if (pause) {
            /* What libvirt's <watchdog action='dump'/> does: dump, cont */
            wait_count(qts, &c.stop, 1);
            qtest_qmp_assert_success(qts, "{'execute': 'cont'}");
        }
        qtest_clock_step(qts, 10 * NS_PER_SEC);
        flush_events(qts);
        if (reset) {
            wait_count(qts, &c.reset, 1);
        }
        g_assert_cmpint(c.watchdog, ==, 1);
        g_assert_cmpint(c.action, ==, 1);
        g_assert_cmpint(c.stop, ==, cases[i].stop);
        g_assert_cmpint(c.reset, ==, cases[i].reset);
        g_assert_cmpint(c.powerdown, ==, cases[i].powerdown);
        if (!reset) {
            /* Every vCPU reported: a warning, then action or ongoing */
            for (int cpu = 0; cpu < CPUS; cpu++) {
                g_assert_cmpint(c.stall[cpu], ==, 2);
            }
            g_assert_cmpint(c.ongoing, ==, CPUS - 1);
            /* The episode ends when every bank was reloaded ... */
            for (int cpu = 0; cpu < CPUS; cpu++) {
                wr(qts, cpu, LOAD_CNT, 10);
            }
        } else {
            /* A reset clears the banks and ends the episode */
            g_assert_cmpuint(rd(qts, 0, STATUS), ==, 0);
            g_assert_cmpint(c.stall[0], ==, 2);
            g_assert_cmpint(c.ongoing, ==, 0);
            arm_bank(qts, 2, 10, 10);
        }
        /* ... and the next hang takes the action again */
        qtest_clock_step(qts, 2 * NS_PER_SEC);
        if (pause) {
            wait_count(qts, &c.stop, 2);
            qtest_qmp_assert_success(qts, "{'execute': 'cont'}");
        }
        flush_events(qts);
        if (reset) {
            wait_count(qts, &c.reset, 2);
        }
        g_assert_cmpint(c.watchdog, ==, 2);
        g_assert_cmpint(c.action, ==, 2);
        g_assert_cmpint(c.stop, ==, 2 * cases[i].stop);
        g_assert_cmpint(c.reset, ==, 2 * cases[i].reset);
        g_assert_cmpint(c.powerdown, ==, 2 * cases[i].powerdown);
        qtest_quit(qts);
    }
}

/*
 * clock=vcpu-runtime across migration: every vCPU's clock is known from
 * its thread at realize, so a destination whose vCPU threads never ran
 * keeps the remaining budget (qtest's vCPU threads run no guest code: the
 * countdown stands still on both sides).
 */
static void test_migration_vcpu_runtime(void)
{
    g_autofree char *dir = g_dir_make_tmp("stall-mig-XXXXXX", NULL);
    g_autofree char *uri = g_strdup_printf("unix:%s/mig.sock", dir);
    g_autofree char *sock = g_strdup_printf("%s/mig.sock", dir);
    const char *args = "-machine virt -smp 2 -action watchdog=none "
        "-device vcpu-stall-detector,id=sd,clock=vcpu-runtime";
    QTestState *src = qtest_init(args);
    g_autofree char *dargs = g_strdup_printf("%s -incoming %s", args, uri);
    QTestState *dst = qtest_init(dargs);

    arm_bank(src, 1, 10, 50);
    qtest_clock_step(src, 3 * NS_PER_SEC);
    g_assert_cmpuint(rd(src, 1, CURRENT_CNT), ==, 50);
    migrate(src, dst, uri);
    g_assert_cmpuint(rd(dst, 1, STATUS), ==, 1);
    g_assert_cmpuint(rd(dst, 1, CURRENT_CNT), ==, 50);
    qtest_clock_step(dst, 10 * NS_PER_SEC);
    g_assert_cmpuint(rd(dst, 1, CURRENT_CNT), ==, 50);
    assert_no_stall_yet(dst);

    qtest_quit(src);
    qtest_quit(dst);
    unlink(sock);
    rmdir(dir);
}

/*
 * clock=vcpu-runtime and a snapshot loaded with -loadvm: the remaining
 * budget of every bank is kept (each vCPU's clock is known at realize, not
 * only once its thread ran). Needs qemu-img (QTEST_QEMU_IMG or PATH).
 */
static void test_loadvm_vcpu_runtime(void)
{
    g_autofree char *dir = g_dir_make_tmp("stall-loadvm-XXXXXX", NULL);
    g_autofree char *disk = g_strdup_printf("%s/snap.qcow2", dir);
    const char *img = g_getenv("QTEST_QEMU_IMG") ?: "qemu-img";
    g_autofree char *create = g_strdup_printf("%s create -q -f qcow2 %s 16M",
                                              img, disk);
    g_autofree char *args = g_strdup_printf(
        "-machine virt -smp 2 -action watchdog=none "
        "-drive if=none,id=d0,format=qcow2,file=%s "
        "-device vcpu-stall-detector,id=sd,clock=vcpu-runtime", disk);
    g_autofree char *load = g_strdup_printf("%s -loadvm s1", args);
    g_autofree char *out = NULL;
    QTestState *qts;
    int status;

    g_assert_true(g_spawn_command_line_sync(create, NULL, NULL, &status, NULL));
    g_assert_cmpint(status, ==, 0);

    qts = qtest_init(args);
    arm_bank(qts, 1, 10, 50);
    wr(qts, 0, CLOCK_FREQ_HZ, 7);
    qtest_clock_step(qts, 3 * NS_PER_SEC);
    out = qtest_hmp(qts, "savevm s1");
    g_assert_cmpstr(out, ==, "");
    qtest_quit(qts);

    qts = qtest_init(load);
    g_assert_cmpuint(rd(qts, 1, STATUS), ==, 1);
    g_assert_cmpuint(rd(qts, 1, LOAD_CNT), ==, 50);
    g_assert_cmpuint(rd(qts, 1, CURRENT_CNT), ==, 50);
    g_assert_cmpuint(rd(qts, 0, CLOCK_FREQ_HZ), ==, 7);
    g_assert_cmpuint(rd(qts, 0, STATUS), ==, 0);
    qtest_clock_step(qts, 10 * NS_PER_SEC);
    g_assert_cmpuint(rd(qts, 1, CURRENT_CNT), ==, 50);
    assert_no_stall_yet(qts);
    qtest_quit(qts);

    unlink(disk);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    qtest_add_func("/vcpu-stall-detector/registers", test_registers);
    qtest_add_func("/vcpu-stall-detector/warning-then-action",
                   test_warning_then_action);
    qtest_add_func("/vcpu-stall-detector/immediate-action-pause",
                   test_immediate_action_pause);
    qtest_add_func("/vcpu-stall-detector/reset-action", test_reset_action);
    qtest_add_func("/vcpu-stall-detector/each-action", test_each_action);
    qtest_add_func("/vcpu-stall-detector/set-action-at-run-time",
                   test_set_action_at_run_time);
    qtest_add_func("/vcpu-stall-detector/pet-keeps-quiet",
                   test_pet_keeps_quiet);
    qtest_add_func("/vcpu-stall-detector/ppi", test_ppi);
    qtest_add_func("/vcpu-stall-detector/system-reset", test_system_reset);
    qtest_add_func("/vcpu-stall-detector/disabled-never-fires",
                   test_disabled_never_fires);
    qtest_add_func("/vcpu-stall-detector/hostile-input", test_hostile_input);
    qtest_add_func("/vcpu-stall-detector/migration-keeps-budget",
                   test_migration_keeps_budget);
    qtest_add_func("/vcpu-stall-detector/qom-state", test_qom_state);
    qtest_add_func("/vcpu-stall-detector/inject-nmi-at-run-time",
                   test_inject_nmi_at_run_time);
    qtest_add_func("/vcpu-stall-detector/event-flood-is-throttled",
                   test_event_flood_is_throttled);
    qtest_add_func("/vcpu-stall-detector/one-hang-one-action",
                   test_one_hang_one_action);
    qtest_add_func("/vcpu-stall-detector/migration-vcpu-runtime",
                   test_migration_vcpu_runtime);
    qtest_add_func("/vcpu-stall-detector/loadvm-vcpu-runtime",
                   test_loadvm_vcpu_runtime);

    return g_test_run();
}
