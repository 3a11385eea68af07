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

/*
 * print("sus", "cpu", 1ull, ": up\n")-style output: the format is a string
 * of 's' (string), 'u' (u64), 'd' (int64_t) and 'x' (u64, hex) letters, one
 * per argument.
 * Whole lines are printed under a lock so that the CPUs' lines never mix.
 */
static void print(const char *fmt, ...)
{
    __builtin_va_list ap;

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

/* The decimal number in fw_cfg file NAME, or DEFAULT_VAL if there is none. */
static u64 fw_cfg_number(const char *name, u64 default_val)
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
            u64 v = 0;
            int digits = 0;

            fw_cfg_select(select);
            for (u32 j = 0; j < size; j++) {
                char c = (char)mmio_read8(FW_CFG_DATA);

                if (c >= '0' && c <= '9') {
                    v = v * 10 + (u64)(c - '0');
                    digits++;
                } else {
                    break;
                }
            }
            return digits ? v : default_val;
        }
    }
    return default_val;
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

static u64 bank(u64 cpu)
{
    return STALL_DETECTOR_BASE + cpu * 0x10;
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

void __attribute__((noreturn)) cpu_main(u64 cpu)
{
    u64 hz = STALL_HZ;
    u64 load;
    u64 period;
    u64 pets;
    u64 next;

    if (cpu == 0) {
        timeout_s = fw_cfg_number("opt/vigil/stall-timeout", STALL_TIMEOUT_S);
        cpu1_pets = fw_cfg_number("opt/vigil/stall-pets", STALL_PETS);
        if (timeout_s == 0) {
            timeout_s = 1;
        }
        print("susus", "cpu0: up, timeout ", timeout_s, " s, cpu1 stops after ",
              cpu1_pets, " pets\n");
        dsb_sy();
        long rc = psci_cpu_on(1, (u64)secondary_entry, 0);
        print("sds", "cpu0: PSCI CPU_ON(1) = ", (int64_t)rc, "\n");
    } else {
        print("sus", "cpu", cpu, ": up\n");
    }

    load = hz * timeout_s;
    /* Pet every T/2 seconds of the generic timer. */
    period = cntfrq() * timeout_s / 2;

    mmio_write32(bank(cpu) + REG_CLOCK_FREQ_HZ, (u32)hz);
    mmio_write32(bank(cpu) + REG_LOAD_CNT, (u32)load);
    mmio_write32(bank(cpu) + REG_STATUS, 1);
    dsb_sy();
    print("susususus", "cpu", cpu, ": armed (hz ", hz, ", load ", load, ", cntfrq ",
          cntfrq(), ")\n");

    next = cntvct() + period;
    for (pets = 1;; pets++) {
        wait_until(next);
        u32 left = mmio_read32(bank(cpu) + REG_CURRENT_CNT);
        mmio_write32(bank(cpu) + REG_LOAD_CNT, (u32)load);
        dsb_sy();
        /* Not next += period: after the host stopped the VM, no burst. */
        next = cntvct() + period;
        print("sususus", "cpu", cpu, ": pet ", pets, " (count was ", (u64)left, ")\n");
        if (cpu == 1 && cpu1_pets && pets >= cpu1_pets) {
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
