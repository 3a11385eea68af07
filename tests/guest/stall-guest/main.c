// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * stall-guest: a bare-metal aarch64 program for QEMU's -M virt that drives
 * the vcpu-stall-detector like Linux's drivers/misc/vcpu_stall_detector.c.
 *
 * CPU 0 starts CPU 1 with PSCI CPU_ON. Each CPU programs its own register
 * bank (CLOCK_FREQ_HZ, LOAD_CNT, STATUS=1) and reloads LOAD_CNT every T/2
 * seconds of the generic timer, busy-waiting in between. After P pets, CPU 1
 * masks interrupts and spins without petting (a stall); CPU 0 pets forever.
 *
 * T and P default to STALL_TIMEOUT_S and STALL_PETS (config.h, -D) and can
 * be set at run time with
 *     -fw_cfg name=opt/vigil/stall-timeout,string=T
 *     -fw_cfg name=opt/vigil/stall-pets,string=P     (0: CPU 1 never stalls)
 *     -fw_cfg name=opt/vigil/stall-mode,string=MODE
 * where MODE is
 *     stall  (default) as above: CPU 1 stalls with interrupts masked.
 *     ppi    CPU 1 enables the detector's PPI (STALL_PPI, INTID 16 + PPI) in
 *            its banked GICv2 registers and runs with interrupts unmasked;
 *            after P pets it spins without petting. Its IRQ handler
 *            acknowledges the interrupt, prints
 *            "cpu1: stall interrupt intid 31", disables its bank (STATUS=0,
 *            which lowers the line), EOIs, and CPU 1 spins on quietly.
 *     nodev  like stall, but no access to the detector at all (for a QEMU
 *            without the device: same busy-wait loops, same output).
 *     bench  only CPU 0 runs: it arms its bank, then times (CNTVCT) rounds
 *            of N writes each to a PL011 register (ILPR, another device),
 *            to CURRENT_CNT (read-only: the device ignores the write) and to
 *            LOAD_CNT (a pet). N and the rounds come from
 *            opt/vigil/bench-iters and opt/vigil/bench-rounds.
 *
 * Progress goes to the PL011 UART, one line at a time.
 */
#include <stdint.h>

#include "config.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* Register offsets within a CPU's 0x10-byte bank. */
#define REG_STATUS          0x0
#define REG_LOAD_CNT        0x4
#define REG_CURRENT_CNT     0x8
#define REG_CLOCK_FREQ_HZ   0xc

#define PSCI_CPU_ON_64      0xc4000003u

enum mode { MODE_STALL, MODE_PPI, MODE_NODEV, MODE_BENCH };

/* GICv2 (-M virt default with TCG) */
#define GICD_CTLR           (GICD_BASE + 0x000)
#define GICD_ISENABLER0     (GICD_BASE + 0x100)
#define GICD_IPRIORITYR(n)  (GICD_BASE + 0x400 + 4 * (n))
#define GICD_ICFGR(n)       (GICD_BASE + 0xc00 + 4 * (n))
#define GICC_CTLR           (GICC_BASE + 0x00)
#define GICC_PMR            (GICC_BASE + 0x04)
#define GICC_IAR            (GICC_BASE + 0x0c)
#define GICC_EOIR           (GICC_BASE + 0x10)
#define GIC_SPURIOUS        1023
#define STALL_INTID         (16 + STALL_PPI)

/* ---- MMIO and system registers ---------------------------------------- */

static inline void mmio_write32(u64 addr, u32 val)
{
    asm volatile("str %w0, [%1]" : : "rZ"(val), "r"(addr) : "memory");
}

static inline u32 mmio_read32(u64 addr)
{
    u32 val;
    asm volatile("ldr %w0, [%1]" : "=r"(val) : "r"(addr) : "memory");
    return val;
}

static inline void mmio_write16(u64 addr, u16 val)
{
    asm volatile("strh %w0, [%1]" : : "rZ"(val), "r"(addr) : "memory");
}

static inline u8 mmio_read8(u64 addr)
{
    u32 val;
    asm volatile("ldrb %w0, [%1]" : "=r"(val) : "r"(addr) : "memory");
    return (u8)val;
}

static inline void dsb_sy(void)
{
    asm volatile("dsb sy" : : : "memory");
}

static inline u64 cntvct(void)
{
    u64 v;
    asm volatile("isb; mrs %0, cntvct_el0" : "=r"(v) : : "memory");
    return v;
}

static inline u64 cntfrq(void)
{
    u64 v;
    asm volatile("mrs %0, cntfrq_el0" : "=r"(v));
    return v;
}

/* ---- UART ---------------------------------------------------------------- */

#define UART_DR (UART_BASE + 0x00)
#define UART_FR (UART_BASE + 0x18)
#define UART_FR_TXFF (1u << 5)

static u32 print_lock;

static void lock(u32 *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
        }
    }
}

static void unlock(u32 *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

static void putc_raw(char c)
{
    while (mmio_read32(UART_FR) & UART_FR_TXFF) {
    }
    mmio_write32(UART_DR, (u8)c);
}

static void puts_raw(const char *s)
{
    while (*s) {
        if (*s == '\n') {
            putc_raw('\r');
        }
        putc_raw(*s++);
    }
}

static void putu_raw(u64 v)
{
    char buf[21];
    int i = sizeof(buf) - 1;

    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_raw(&buf[i]);
}

static void putx_raw(u64 v)
{
    char buf[19];
    int i = sizeof(buf) - 1;

    buf[i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v & 0xf];
        v >>= 4;
    } while (v);
    buf[--i] = 'x';
    buf[--i] = '0';
    puts_raw(&buf[i]);
}

static inline u64 irq_save(void)
{
    u64 daif;

    asm volatile("mrs %0, daif; msr daifset, #2" : "=r"(daif) : : "memory");
    return daif;
}

static inline void irq_restore(u64 daif)
{
    asm volatile("msr daif, %0" : : "r"(daif) : "memory");
}

/*
 * print("sus", "cpu", 1ull, ": up\n")-style output: the format is a string
 * of 's' (string), 'u' (u64), 'd' (int64_t) and 'x' (u64, hex) letters, one
 * per argument.
 * Whole lines are printed under a lock so that the CPUs' lines never mix;
 * IRQs are masked meanwhile, so that a handler that prints cannot deadlock.
 */
static void print(const char *fmt, ...)
{
    __builtin_va_list ap;
    u64 daif = irq_save();

    __builtin_va_start(ap, fmt);
    lock(&print_lock);
    for (; *fmt; fmt++) {
        switch (*fmt) {
        case 's':
            puts_raw(__builtin_va_arg(ap, const char *));
            break;
        case 'u':
            putu_raw(__builtin_va_arg(ap, u64));
            break;
        case 'd': {
            int64_t v = __builtin_va_arg(ap, int64_t);

            if (v < 0) {
                putc_raw('-');
            }
            putu_raw(v < 0 ? -(u64)v : (u64)v);
            break;
        }
        case 'x':
            putx_raw(__builtin_va_arg(ap, u64));
            break;
        }
    }
    unlock(&print_lock);
    __builtin_va_end(ap);
    irq_restore(daif);
}

/* ---- fw_cfg (MMIO interface, only what is needed to read a small file) - */

#define FW_CFG_DATA     (FW_CFG_BASE + 0x0)
#define FW_CFG_SEL      (FW_CFG_BASE + 0x8)
#define FW_CFG_FILE_DIR 0x19

static void fw_cfg_select(u16 key)
{
    /* The selector register is big-endian. */
    mmio_write16(FW_CFG_SEL, __builtin_bswap16(key));
}

static u32 fw_cfg_be(int bytes)
{
    u32 v = 0;

    while (bytes--) {
        v = v << 8 | mmio_read8(FW_CFG_DATA);
    }
    return v;
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/*
 * Reads fw_cfg file NAME into BUF (at most LEN - 1 bytes, NUL-terminated).
 * Returns 0, or -1 if there is no such file.
 */
static int fw_cfg_read(const char *name, char *buf, u32 len)
{
    u32 count;

    fw_cfg_select(FW_CFG_FILE_DIR);
    count = fw_cfg_be(4);
    for (u32 i = 0; i < count; i++) {
        u32 size = fw_cfg_be(4);
        u16 select = (u16)fw_cfg_be(2);
        char fname[56];

        (void)fw_cfg_be(2); /* reserved */
        for (int j = 0; j < 56; j++) {
            fname[j] = (char)mmio_read8(FW_CFG_DATA);
        }
        fname[55] = 0;
        if (streq(fname, name)) {
            u32 j;

            fw_cfg_select(select);
            for (j = 0; j < size && j + 1 < len; j++) {
                buf[j] = (char)mmio_read8(FW_CFG_DATA);
            }
            buf[j] = 0;
            return 0;
        }
    }
    return -1;
}

/* The decimal number in fw_cfg file NAME, or DEFAULT_VAL if there is none. */
static u64 fw_cfg_number(const char *name, u64 default_val)
{
    char buf[24];
    u64 v = 0;
    int digits = 0;

    if (fw_cfg_read(name, buf, sizeof(buf)) < 0) {
        return default_val;
    }
    for (const char *c = buf; *c >= '0' && *c <= '9'; c++) {
        v = v * 10 + (u64)(*c - '0');
        digits++;
    }
    return digits ? v : default_val;
}

/* The first word of fw_cfg file NAME (up to whitespace) in BUF, or "". */
static void fw_cfg_word(const char *name, char *buf, u32 len)
{
    if (fw_cfg_read(name, buf, len) < 0) {
        buf[0] = 0;
    }
    for (char *c = buf; *c; c++) {
        if (*c == ' ' || *c == '\n' || *c == '\r' || *c == '\t') {
            *c = 0;
            break;
        }
    }
}

/* ---- PSCI ---------------------------------------------------------------- */

extern char secondary_entry[];

static long psci_cpu_on(u64 target_mpidr, u64 entry, u64 context)
{
    register u64 x0 asm("x0") = PSCI_CPU_ON_64;
    register u64 x1 asm("x1") = target_mpidr;
    register u64 x2 asm("x2") = entry;
    register u64 x3 asm("x3") = context;

#if PSCI_HVC
    asm volatile("hvc #0"
#else
    asm volatile("smc #0"
#endif
                 : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)
                 :
                 : "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12",
                   "x13", "x14", "x15", "x16", "x17", "memory");
    return (long)x0;
}

/* ---- the stall detector driver ------------------------------------------ */

/* Set by CPU 0 before it starts CPU 1. */
static u64 timeout_s;
static u64 cpu1_pets;
static enum mode mode;
static const char *mode_name;

static u64 bank(u64 cpu)
{
    return STALL_DETECTOR_BASE + cpu * 0x10;
}

/* Register accesses of the detector; none at all in nodev mode. */
static void dev_write(u64 cpu, u32 reg, u32 val)
{
    if (mode != MODE_NODEV) {
        mmio_write32(bank(cpu) + reg, val);
    }
}

static u32 dev_read(u64 cpu, u32 reg)
{
    return mode == MODE_NODEV ? 0 : mmio_read32(bank(cpu) + reg);
}

static u64 this_cpu(void)
{
    u64 mpidr;

    asm volatile("mrs %0, mpidr_el1" : "=r"(mpidr));
    return mpidr & 0xff;
}

static void wait_until(u64 deadline)
{
    while ((int64_t)(cntvct() - deadline) < 0) {
    }
}

static void __attribute__((noreturn)) stall(u64 cpu)
{
    print("sus", "cpu", cpu, ": stop petting\n");
    asm volatile("msr daifset, #0xf" : : : "memory");
    for (;;) {
        asm volatile("" : : : "memory");
    }
}

/* ---- ppi mode: CPU 1 takes the detector's interrupt --------------------- */

static volatile u32 stall_irqs;

/*
 * Called by this CPU for itself: PPI enables, priorities and configuration
 * are banked per CPU, and so is the CPU interface.
 */
static void gic_enable_stall_ppi(u64 cpu)
{
    u32 cfg;

    /* Enabling the distributor is global; doing it twice does no harm. */
    mmio_write32(GICD_CTLR, 1);
    /* Priority 0x80: numerically below the priority mask, so it is signalled. */
    u32 prio = mmio_read32(GICD_IPRIORITYR(STALL_INTID / 4));
    prio &= ~(0xffu << (8 * (STALL_INTID % 4)));
    prio |= 0x80u << (8 * (STALL_INTID % 4));
    mmio_write32(GICD_IPRIORITYR(STALL_INTID / 4), prio);
    /* Edge-triggered, as the device tree says (Linux would do the same). */
    cfg = mmio_read32(GICD_ICFGR(STALL_INTID / 16));
    cfg |= 2u << (2 * (STALL_INTID % 16));
    mmio_write32(GICD_ICFGR(STALL_INTID / 16), cfg);
    mmio_write32(GICD_ISENABLER0, 1u << STALL_INTID);
    mmio_write32(GICC_PMR, 0xff);
    mmio_write32(GICC_CTLR, 1);
    dsb_sy();
    print("susususxsxs", "cpu", cpu, ": GIC: intid ", (u64)STALL_INTID, " (PPI ", (u64)STALL_PPI,
          ") enabled (ISENABLER0 ",
          (u64)mmio_read32(GICD_ISENABLER0), ", ICFGR ", (u64)mmio_read32(GICD_ICFGR(STALL_INTID / 16)),
          ")\n");
}

/* From the IRQ vectors (start.S), with IRQs masked. */
void irq_handler(void)
{
    u64 cpu = this_cpu();
    u32 iar = mmio_read32(GICC_IAR);
    u32 intid = iar & 0x3ff;

    if (intid == GIC_SPURIOUS) {
        return;
    }
    if (intid == STALL_INTID) {
        stall_irqs++;
        print("susus", "cpu", cpu, ": stall interrupt intid ", (u64)intid, "\n");
        /* Handle the stall like a driver that gives up on the countdown:
         * disabling the bank lowers the interrupt line. */
        dev_write(cpu, REG_STATUS, 0);
        dsb_sy();
    } else {
        print("susus", "cpu", cpu, ": unexpected interrupt intid ", (u64)intid, "\n");
    }
    mmio_write32(GICC_EOIR, iar);
}

/*
 * Stops petting, interrupts unmasked. Busy, not WFI: a stall of a vCPU that
 * keeps running (with clock=vcpu-runtime the budget is the vCPU's CPU time).
 * After the interrupt, it keeps spinning quietly, so that the device would
 * still see the vCPU run if it had not stopped counting.
 */
static void __attribute__((noreturn)) stall_unmasked(u64 cpu)
{
    u32 seen = 0;

    print("sus", "cpu", cpu, ": stop petting (interrupts unmasked)\n");
    asm volatile("msr daifclr, #2" : : : "memory");
    for (;;) {
        u32 n = stall_irqs;

        if (n != seen) {
            seen = n;
            print("sus", "cpu", cpu, ": back from the stall interrupt, bank disabled, spinning\n");
        }
        asm volatile("" : : : "memory");
    }
}

/* ---- bench mode: cost of a pet ------------------------------------------ */

#define UART_ILPR (UART_BASE + 0x20)

static u64 time_writes(u64 addr, u32 val, u64 n)
{
    u64 t0 = cntvct();

    for (u64 i = 0; i < n; i++) {
        mmio_write32(addr, val);
    }
    dsb_sy();
    return cntvct() - t0;
}

static void __attribute__((noreturn)) bench(void)
{
    u64 n = fw_cfg_number("opt/vigil/bench-iters", 200000);
    u64 rounds = fw_cfg_number("opt/vigil/bench-rounds", 3);
    u64 hz = STALL_HZ;
    u32 load = (u32)(hz * timeout_s);
    static const char *const names[] = { "ref", "noop", "pet" };

    mmio_write32(bank(0) + REG_CLOCK_FREQ_HZ, (u32)hz);
    mmio_write32(bank(0) + REG_LOAD_CNT, load);
    mmio_write32(bank(0) + REG_STATUS, 1);
    dsb_sy();
    print("susus", "bench: cntfrq ", cntfrq(), " iters ", n, "\n");
    for (u64 r = 1; r <= rounds; r++) {
        for (int k = 0; k < 3; k++) {
            u64 addr = k == 0 ? UART_ILPR : bank(0) + (k == 1 ? REG_CURRENT_CNT : REG_LOAD_CNT);
            u32 val = k == 0 ? 0 : load;
            /* The host samples its clocks when it reads these two lines. */
            print("susss", "bench: round ", r, " ", names[k], " begin\n");
            u64 ticks = time_writes(addr, val, n);
            print("susssus", "bench: round ", r, " ", names[k], " end ticks ", ticks, "\n");
        }
    }
    /* The bank was reloaded last in the "pet" phase: keep it alive. */
    print("s", "bench: done\n");
    for (;;) {
        u64 next = cntvct() + cntfrq() * timeout_s / 2;

        wait_until(next);
        mmio_write32(bank(0) + REG_LOAD_CNT, load);
    }
}

void __attribute__((noreturn)) cpu_main(u64 cpu)
{
    u64 hz = STALL_HZ;
    u64 load;
    u64 period;
    u64 pets;
    u64 next;

    if (cpu == 0) {
        char m[16];

        timeout_s = fw_cfg_number("opt/vigil/stall-timeout", STALL_TIMEOUT_S);
        cpu1_pets = fw_cfg_number("opt/vigil/stall-pets", STALL_PETS);
        if (timeout_s == 0) {
            timeout_s = 1;
        }
        fw_cfg_word("opt/vigil/stall-mode", m, sizeof(m));
        mode_name = "stall";
        if (streq(m, "ppi")) {
            mode = MODE_PPI;
            mode_name = "ppi";
        } else if (streq(m, "nodev")) {
            mode = MODE_NODEV;
            mode_name = "nodev";
        } else if (streq(m, "bench")) {
            mode = MODE_BENCH;
            mode_name = "bench";
        } else if (m[0] && !streq(m, "stall")) {
            print("sss", "cpu0: unknown mode '", m, "', using stall\n");
        }
        print("susus", "cpu0: up, timeout ", timeout_s, " s, cpu1 stops after ", cpu1_pets,
              " pets\n");
        if (mode != MODE_STALL) {
            print("sss", "cpu0: mode ", mode_name, "\n");
        }
        if (mode == MODE_BENCH) {
            bench();
        }
        dsb_sy();
        long rc = psci_cpu_on(1, (u64)secondary_entry, 0);
        print("sds", "cpu0: PSCI CPU_ON(1) = ", (int64_t)rc, "\n");
    } else {
        print("sus", "cpu", cpu, ": up\n");
    }

    if (cpu == 1 && mode == MODE_PPI) {
        gic_enable_stall_ppi(cpu);
        /* Unmasked from now on: an interrupt while petting would show. */
        asm volatile("msr daifclr, #2" : : : "memory");
    }

    load = hz * timeout_s;
    /* Pet every T/2 seconds of the generic timer. */
    period = cntfrq() * timeout_s / 2;

    dev_write(cpu, REG_CLOCK_FREQ_HZ, (u32)hz);
    dev_write(cpu, REG_LOAD_CNT, (u32)load);
    dev_write(cpu, REG_STATUS, 1);
    dsb_sy();
    print("susususus", "cpu", cpu, ": armed (hz ", hz, ", load ", load, ", cntfrq ",
          cntfrq(), ")\n");

    next = cntvct() + period;
    for (pets = 1;; pets++) {
        wait_until(next);
        u32 left = dev_read(cpu, REG_CURRENT_CNT);
        dev_write(cpu, REG_LOAD_CNT, (u32)load);
        dsb_sy();
        /* Not next += period: after the host stopped the VM, no burst. */
        next = cntvct() + period;
        print("sususus", "cpu", cpu, ": pet ", pets, " (count was ", (u64)left, ")\n");
        if (cpu == 1 && cpu1_pets && pets >= cpu1_pets) {
            if (mode == MODE_PPI) {
                stall_unmasked(cpu);
            }
            stall(cpu);
        }
    }
}

void report_exception(u64 vector, u64 esr, u64 elr, u64 far)
{
    u64 mpidr;

    asm volatile("mrs %0, mpidr_el1" : "=r"(mpidr));
    /* No lock: the other CPU may hold it forever if it faulted inside. */
    puts_raw("cpu");
    putu_raw(mpidr & 0xff);
    puts_raw(": EXCEPTION vector ");
    putu_raw(vector);
    puts_raw(" esr ");
    putx_raw(esr);
    puts_raw(" elr ");
    putx_raw(elr);
    puts_raw(" far ");
    putx_raw(far);
    puts_raw("\n");
}
