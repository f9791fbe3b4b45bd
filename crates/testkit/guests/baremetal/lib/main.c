/* Entry: the PVH start info, the command line, the mode table, DMA memory,
 * time, power-off. */
#include "pv.h"

extern const struct pv_mode __pv_modes_start[], __pv_modes_end[];
extern u8 __image_end[];

const char *pv_cmdline = "";
u32 ram_top;
u64 tsc_per_ms = 3000000;

/* DMA memory starts at 16 MiB, well above the image and its stack. */
#define DMA_START 0x01000000u
static u32 dma_next = DMA_START;

void *dma_alloc(u32 size, u32 align)
{
    if (align < 16)
        align = 16;
    u32 at = (dma_next + align - 1) & ~(align - 1);
    /* Keep the last MiB below the top free: cases aim buffers near it. */
    if (at + size < at || at + size > ram_top - 0x100000) {
        printf("BAREMETAL out of DMA memory (%u bytes asked, %u left)\n", size, dma_free());
        poweroff();
    }
    dma_next = at + size;
    /* Not zeroed: under an emulating hypervisor clearing megabytes costs
     * seconds; callers clear what they read back. */
    return (void *)at;
}

u32 dma_mark(void) { return dma_next; }
void dma_release(u32 mark) { dma_next = mark; }
u32 dma_free(void) { return ram_top - 0x100000 - dma_next; }

int cmdline_get(const char *key, char *buf, int size)
{
    size_t klen = strlen(key);
    const char *p = pv_cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, klen) && p[klen] == '=') {
            p += klen + 1;
            int n = 0;
            while (p[n] && p[n] != ' ') {
                if (n + 1 < size)
                    buf[n] = p[n];
                n++;
            }
            if (size)
                buf[n < size ? n : size - 1] = 0;
            return n;
        }
        while (*p && *p != ' ')
            p++;
    }
    return -1;
}

u64 now_ms(void)
{
    /* No libgcc: divide by a 32-bit value in two steps. */
    u64 t = rdtsc();
    u32 per = (u32)tsc_per_ms, hi = (u32)(t >> 32), lo = (u32)t, q, r;
    u32 qhi = hi / per;
    __asm__("divl %4" : "=a"(q), "=d"(r) : "a"(lo), "d"(hi % per), "rm"(per));
    return ((u64)qhi << 32) | q;
}

void delay_ms(u32 ms)
{
    u64 end = rdtsc() + tsc_per_ms * ms;
    while (rdtsc() < end)
        cpu_relax();
}

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static void calibrate(void)
{
    u32 a, b, c, d, max;
    cpuid(0, &max, &b, &c, &d);
    if (max >= 0x15) {
        cpuid(0x15, &a, &b, &c, &d);
        if (a && b && c) {
            tsc_per_ms = (c / 1000) * b / a;
            return;
        }
    }
    if (max >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);
        if (a)
            tsc_per_ms = (u64)a * 1000;
    }
}

NORETURN void poweroff(void)
{
    /* SLP_TYP 5 (\_S5 in the DSDT) with SLP_EN. */
    outb(0x600, (5 << 2) | 0x20);
    for (;;)
        __asm__ volatile("hlt");
}

struct memmap_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
} PACKED;

void pv_main(struct hvm_start_info *si)
{
    serial_init();
    calibrate();
    if (si && si->magic == 0x336ec578 && si->cmdline_paddr && si->cmdline_paddr < 0x100000000ull)
        pv_cmdline = (const char *)(u32)si->cmdline_paddr;
    ram_top = 64u << 20;
    if (si && si->memmap_paddr && si->memmap_entries) {
        const struct memmap_entry *e = (const void *)(u32)si->memmap_paddr;
        u32 top = 0;
        for (u32 i = 0; i < si->memmap_entries; i++) {
            u64 end = e[i].addr + e[i].size;
            if (e[i].type == 1 && end <= 0xc0000000ull && end > top)
                top = (u32)end;
        }
        if (top)
            ram_top = top;
    }
    char mode[32];
    if (cmdline_get("mode", mode, sizeof(mode)) < 0) {
        printf("BAREMETAL no mode= on the command line '%s'\n", pv_cmdline);
        poweroff();
    }
    for (const struct pv_mode *m = __pv_modes_start; m < __pv_modes_end; m++) {
        if (!strcmp(m->name, mode)) {
            printf("BAREMETAL mode=%s ram=%uM tsc=%ukHz\n", mode, ram_top >> 20,
                   (u32)tsc_per_ms);
            m->run(pv_cmdline);
            poweroff();
        }
    }
    printf("BAREMETAL unknown mode '%s'; modes:", mode);
    for (const struct pv_mode *m = __pv_modes_start; m < __pv_modes_end; m++)
        printf(" %s", m->name);
    printf("\n");
    poweroff();
}
