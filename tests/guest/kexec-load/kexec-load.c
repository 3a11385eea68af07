/*
 * kexec-load: the smallest kexec loader for the arm64 test guests (busybox
 * has no kexec applet). Freestanding: raw syscalls, no libc.
 *
 *   kexec-load -p KERNEL INITRD CMDLINE   load a crash kernel (kdump)
 *   kexec-load -l KERNEL INITRD CMDLINE   load a kernel for kexec reboot
 *   kexec-load -e KERNEL INITRD CMDLINE   load it, then reboot into it
 *
 * kexec_file_load(2) (CONFIG_KEXEC_FILE) does the parsing in the kernel.
 * Build: aarch64-linux-gnu-gcc -static -nostdlib -ffreestanding -O2
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define SYS_openat          56
#define SYS_write           64
#define SYS_exit            93
#define SYS_reboot          142
#define SYS_kexec_file_load 294
#define AT_FDCWD            -100
#define KEXEC_FILE_ON_CRASH 2
#define REBOOT_MAGIC1       0xfee1dead
#define REBOOT_MAGIC2       672274793
#define REBOOT_CMD_KEXEC    0x45584543

static long sys6(long n, long a, long b, long c, long d, long e)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;

    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4)
                     : "memory");
    return x0;
}

static unsigned long len(const char *s)
{
    unsigned long n = 0;

    while (s[n]) {
        n++;
    }
    return n;
}

static void say(const char *a, const char *b, long err)
{
    char num[24];
    int i = sizeof(num);

    sys6(SYS_write, 2, (long)"kexec-load: ", 12, 0, 0);
    sys6(SYS_write, 2, (long)a, len(a), 0, 0);
    sys6(SYS_write, 2, (long)b, len(b), 0, 0);
    if (err) {
        unsigned long v = -err;

        num[--i] = '\n';
        do {
            num[--i] = '0' + v % 10;
            v /= 10;
        } while (v);
        num[--i] = '-';
        num[--i] = ' ';
        sys6(SYS_write, 2, (long)num + i, sizeof(num) - i, 0, 0);
    } else {
        sys6(SYS_write, 2, (long)"\n", 1, 0, 0);
    }
}

static long openr(const char *path)
{
    long fd = sys6(SYS_openat, AT_FDCWD, (long)path, 0, 0, 0);

    if (fd < 0) {
        say("cannot open ", path, fd);
        sys6(SYS_exit, 1, 0, 0, 0, 0);
    }
    return fd;
}

__attribute__((used)) static void cmain(long *sp)
{
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    long kfd, ifd, r, flags = 0;
    char mode;

    if (argc != 5 || argv[1][0] != '-') {
        say("usage: kexec-load -p|-l|-e KERNEL INITRD CMDLINE", "", 0);
        sys6(SYS_exit, 2, 0, 0, 0, 0);
    }
    mode = argv[1][1];
    if (mode == 'p') {
        flags = KEXEC_FILE_ON_CRASH;
    }
    kfd = openr(argv[2]);
    ifd = openr(argv[3]);
    r = sys6(SYS_kexec_file_load, kfd, ifd, len(argv[4]) + 1, (long)argv[4], flags);
    if (r < 0) {
        say("kexec_file_load failed", "", r);
        sys6(SYS_exit, 1, 0, 0, 0, 0);
    }
    say(mode == 'p' ? "crash kernel loaded: " : "kernel loaded: ", argv[4], 0);
    if (mode == 'e') {
        r = sys6(SYS_reboot, REBOOT_MAGIC1, REBOOT_MAGIC2, REBOOT_CMD_KEXEC, 0, 0);
        say("reboot(LINUX_REBOOT_CMD_KEXEC) failed", "", r);
        sys6(SYS_exit, 1, 0, 0, 0, 0);
    }
    sys6(SYS_exit, 0, 0, 0, 0, 0);
}

__asm__(".text\n.global _start\n_start:\n\tmov x0, sp\n\tbl cmain\n\tb .\n");
