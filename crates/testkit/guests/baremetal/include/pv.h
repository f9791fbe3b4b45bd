/* The bare-metal test guest's library: freestanding, 32-bit, no interrupts.
 *
 * The guest runs in 32-bit protected mode with paging off (PVH entry), so a
 * pointer is a guest physical address. Devices are driven by polling with
 * bounded waits; nothing here takes an interrupt.
 *
 *   serial.c    COM1 output, printf-lite (%s %c %d %u %x, %llx/%llu for u64, width, 0 pad)
 *   pci.c       ECAM and CF8/CFC config access, bus 0 scan
 *   virtio.c    virtio-pci modern transport and a polled split virtqueue
 *   blk.c gpu.c rng.c   well-formed requests for each device
 *   main.c      entry: memory map, command line, the mode table, power-off
 *
 * A mode is a function registered with PV_MODE("name", fn); the guest runs
 * the one the command line names (mode=NAME) and powers off when it returns.
 */
#ifndef PV_H
#define PV_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef int s32;
typedef long long s64;
typedef unsigned int size_t;
typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_end(ap) __builtin_va_end(ap)

#define NULL ((void *)0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PACKED __attribute__((packed))
#define NORETURN __attribute__((noreturn))
#define PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ---- port I/O ---------------------------------------------------------- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* ---- MMIO: plain MOVs, which any instruction emulator decodes ----------- */
static inline u8 mmio_read8(u32 a)
{
    u8 v;
    __asm__ volatile("movb (%1), %0" : "=q"(v) : "r"(a) : "memory");
    return v;
}
static inline u16 mmio_read16(u32 a)
{
    u16 v;
    __asm__ volatile("movw (%1), %0" : "=r"(v) : "r"(a) : "memory");
    return v;
}
static inline u32 mmio_read32(u32 a)
{
    u32 v;
    __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(a) : "memory");
    return v;
}
static inline void mmio_write8(u32 a, u8 v) { __asm__ volatile("movb %0, (%1)" ::"q"(v), "r"(a) : "memory"); }
static inline void mmio_write16(u32 a, u16 v) { __asm__ volatile("movw %0, (%1)" ::"r"(v), "r"(a) : "memory"); }
static inline void mmio_write32(u32 a, u32 v) { __asm__ volatile("movl %0, (%1)" ::"r"(v), "r"(a) : "memory"); }
/* 64-bit registers as two 32-bit halves, low first (virtio allows this). */
static inline void mmio_write64(u32 a, u64 v)
{
    mmio_write32(a, (u32)v);
    mmio_write32(a + 4, (u32)(v >> 32));
}
static inline u64 mmio_read64(u32 a) { return mmio_read32(a) | ((u64)mmio_read32(a + 4) << 32); }

/* ---- ordering and time ------------------------------------------------- */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mb(void) { __asm__ volatile("lock; addl $0, (%%esp)" ::: "memory", "cc"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
/* Volatile loads and stores of guest RAM the devices also touch. */
#define READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* TSC ticks per millisecond (CPUID 0x15/0x16, else an assumed 3 GHz). */
extern u64 tsc_per_ms;
u64 now_ms(void);
void delay_ms(u32 ms);

/* ---- string.c ---------------------------------------------------------- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* ---- serial.c ---------------------------------------------------------- */
#define COM1 0x3f8
void serial_init(void);
void serial_putc(char c);
void serial_puts(const char *s);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) PRINTF(3, 4);
void printf(const char *fmt, ...) PRINTF(1, 2);

/* ---- main.c: the machine ----------------------------------------------- */
/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
} PACKED;

struct pv_mode {
    const char *name;
    void (*run)(const char *cmdline);
};
/* Registers a mode: PV_MODE("hostile", hostile_main). */
#define PV_MODE(nm, fn)                                                                       \
    static const struct pv_mode pv_mode_##fn __attribute__((section(".pv_modes"), used)) = { \
        nm, fn}

/* The command line the VMM passed. */
extern const char *pv_cmdline;
/* Copies the value of `key=value` on the command line into buf (NUL
 * terminated); returns its length, or -1 when the key is absent. */
int cmdline_get(const char *key, char *buf, int size);
/* End of RAM below 4 GiB (from the PVH memory map). */
extern u32 ram_top;
/* ACPI S5 through the hardware-reduced sleep control register. */
NORETURN void poweroff(void);

/* DMA memory: a bump allocator over RAM above the image (16 MiB up). The
 * memory is not cleared (it may hold an earlier user's bytes). */
void *dma_alloc(u32 size, u32 align);
u32 dma_mark(void);
void dma_release(u32 mark);
/* Bytes left to dma_alloc. */
u32 dma_free(void);

/* ---- pci.c ------------------------------------------------------------- */
#define PCI_ECAM_BASE 0xe0000000u
#define PCI_ECAM_SIZE 0x100000u
u32 ecam_addr(u8 bus, u8 dev, u8 fn, u16 off);
u32 pci_read32(u8 dev, u16 off); /* bus 0 function 0 through ECAM */
u16 pci_read16(u8 dev, u16 off);
u8 pci_read8(u8 dev, u16 off);
void pci_write32(u8 dev, u16 off, u32 v);
void pci_write16(u8 dev, u16 off, u16 v);
void pci_write8(u8 dev, u16 off, u8 v);
u32 cf8_addr(u8 bus, u8 dev, u8 fn, u8 off);
u32 cf8_read32(u8 bus, u8 dev, u8 fn, u8 off);
void cf8_write32(u8 bus, u8 dev, u8 fn, u8 off, u32 v);
/* Slot of the nth (0-based) function with this vendor/device id, or -1. */
int pci_find(u16 vendor, u16 device, int nth);
/* Offset of the first capability with this id at or after `from` (0: the
 * list head), or 0. */
u8 pci_find_cap(u8 dev, u8 id, u8 from);

/* ---- virtio.c ---------------------------------------------------------- */
#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_ID_BLOCK 0x1042
#define VIRTIO_ID_RNG 0x1044
#define VIRTIO_ID_GPU 0x1050
#define VIRTIO_ID_INPUT 0x1052

#define VIRTIO_S_ACKNOWLEDGE 1
#define VIRTIO_S_DRIVER 2
#define VIRTIO_S_DRIVER_OK 4
#define VIRTIO_S_FEATURES_OK 8
#define VIRTIO_S_NEEDS_RESET 0x40
#define VIRTIO_S_FAILED 0x80

#define VIRTIO_F_INDIRECT_DESC (1ull << 28)
#define VIRTIO_F_EVENT_IDX (1ull << 29)
#define VIRTIO_F_VERSION_1 (1ull << 32)

/* Common configuration (virtio_pci_common_cfg) offsets. */
#define VCC_DFSELECT 0x00
#define VCC_DF 0x04
#define VCC_GFSELECT 0x08
#define VCC_GF 0x0c
#define VCC_MSIX 0x10
#define VCC_NUMQ 0x12
#define VCC_STATUS 0x14
#define VCC_CFGGEN 0x15
#define VCC_QSELECT 0x16
#define VCC_QSIZE 0x18
#define VCC_QMSIX 0x1a
#define VCC_QENABLE 0x1c
#define VCC_QNOTIFYOFF 0x1e
#define VCC_QDESC 0x20
#define VCC_QAVAIL 0x28
#define VCC_QUSED 0x30
#define VIRTIO_NO_VECTOR 0xffff

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
} PACKED;
struct vring_avail {
    u16 flags;
    u16 idx;
    u16 ring[];
} PACKED;
struct vring_used_elem {
    u32 id;
    u32 len;
} PACKED;
struct vring_used {
    u16 flags;
    u16 idx;
    struct vring_used_elem ring[];
} PACKED;

#define VQ_MAX 4
#define VQ_MAX_SIZE 256
/* Each queue's rings: descriptors at +0, available at +0x1000, used at +0x2000. */
#define VQ_AREA 0x4000

struct vq {
    u16 index;
    u16 size;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    u16 next_avail; /* the driver's available index */
    u16 last_used;  /* used entries consumed */
    u32 notify;     /* MMIO address of this queue's notification */
};

struct vdev {
    const char *name;
    int slot;
    u16 device_id;
    u32 bar;         /* BAR 0 */
    u32 common;      /* MMIO addresses of the structures */
    u32 isr;
    u32 devcfg;
    u32 notify_base;
    u32 notify_mult;
    u8 msix_cap;     /* config-space offset */
    u32 msix_table;  /* MMIO addresses */
    u32 msix_pba;
    u16 msix_vectors;
    u16 num_queues;
    u64 dev_features;
    u64 drv_features;
    u8 *rings;       /* VQ_AREA bytes per queue, allocated once */
    struct vq vq[VQ_MAX];
};

/* Finds the nth virtio device with this PCI device id and walks its
 * capabilities; returns 0, or -1 when absent or malformed. */
int virtio_find(struct vdev *d, const char *name, u16 device_id, int nth);
u8 vdev_status(struct vdev *d);
void vdev_set_status(struct vdev *d, u8 s);
/* Writes 0 to the status and waits for it to read back 0. */
int vdev_reset(struct vdev *d);
/* Reset, ACKNOWLEDGE, DRIVER, features (device's & want), FEATURES_OK,
 * every queue at `qsize` (0: the maximum) with NO_VECTOR, DRIVER_OK.
 * Returns 0 or a negative step number. */
int vdev_init(struct vdev *d, u64 want, u16 qsize);
/* The steps of vdev_init, for drivers that go astray on purpose. */
int vdev_begin(struct vdev *d);                 /* reset, ACK, DRIVER */
int vdev_features(struct vdev *d, u64 want);    /* write features, FEATURES_OK, check */
int vq_setup(struct vdev *d, u16 q, u16 size);  /* rings in d->rings, enable */
int vdev_driver_ok(struct vdev *d);
u64 vdev_read_features(struct vdev *d, u32 which); /* 0: device, 1: driver */
void vq_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next);
void vq_post(struct vq *q, u16 head);
void vq_kick(struct vdev *d, struct vq *q);
/* Waits up to ms for n more used entries; copies them to out (may be
 * NULL) and consumes them. Returns 0, or -1 on timeout (nothing consumed). */
int vq_wait(struct vq *q, u16 n, u32 ms, struct vring_used_elem *out);
/* Used entries not consumed yet. */
u16 vq_pending(struct vq *q);
/* Post one chain, kick, wait for it: returns the used length, or -1. */
s32 vq_run(struct vdev *d, struct vq *q, u16 head, u32 ms);
#define WAIT_MS 3000

/* ---- blk.c ------------------------------------------------------------- */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_T_DISCARD 11
#define BLK_T_WRITE_ZEROES 13
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2
#define BLK_F_RO (1ull << 5)
#define SECTOR 512
/* No answer within the wait: */
#define BLK_TIMEOUT 0x100
struct blk_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
} PACKED;
/* The byte at `offset` of the host-written test disk `disk` (0 writable, 1 read-only). */
u8 disk_pattern(int disk, u64 offset);
/* One request: header, then len bytes of buf (device-writable for IN and
 * GET_ID, readable otherwise; none when len is 0), then the status byte.
 * Returns the status, or BLK_TIMEOUT; *used gets the used length. */
u32 blk_request(struct vdev *d, u32 type, u64 sector, void *buf, u32 len, u32 *used);
/* Reads sector `sector` and compares it with disk_pattern(disk); returns 0
 * or writes why into why. */
int blk_check_sector(struct vdev *d, int disk, u64 sector, char *why, int whylen);
u64 blk_capacity(struct vdev *d);

/* ---- gpu.c ------------------------------------------------------------- */
#define GPU_CMD_GET_DISPLAY_INFO 0x0100
#define GPU_CMD_RESOURCE_CREATE_2D 0x0101
#define GPU_CMD_RESOURCE_UNREF 0x0102
#define GPU_CMD_SET_SCANOUT 0x0103
#define GPU_CMD_RESOURCE_FLUSH 0x0104
#define GPU_CMD_TRANSFER_TO_HOST_2D 0x0105
#define GPU_CMD_RESOURCE_ATTACH_BACKING 0x0106
#define GPU_CMD_RESOURCE_DETACH_BACKING 0x0107
#define GPU_CMD_GET_CAPSET_INFO 0x0108
#define GPU_CMD_GET_CAPSET 0x0109
#define GPU_CMD_GET_EDID 0x010a
#define GPU_CMD_RESOURCE_ASSIGN_UUID 0x010b
#define GPU_CMD_RESOURCE_CREATE_BLOB 0x010c
#define GPU_CMD_SET_SCANOUT_BLOB 0x010d
#define GPU_CMD_CTX_CREATE 0x0200
#define GPU_CMD_CTX_DESTROY 0x0201
#define GPU_CMD_RESOURCE_CREATE_3D 0x0204
#define GPU_CMD_SUBMIT_3D 0x0207
#define GPU_CMD_RESOURCE_MAP_BLOB 0x0208
#define GPU_CMD_UPDATE_CURSOR 0x0300
#define GPU_CMD_MOVE_CURSOR 0x0301
#define GPU_RESP_OK_NODATA 0x1100
#define GPU_RESP_OK_DISPLAY_INFO 0x1101
#define GPU_RESP_OK_CAPSET_INFO 0x1102
#define GPU_RESP_OK_EDID 0x1104
#define GPU_RESP_ERR_UNSPEC 0x1200
#define GPU_RESP_ERR_OUT_OF_MEMORY 0x1201
#define GPU_RESP_ERR_INVALID_SCANOUT_ID 0x1202
#define GPU_RESP_ERR_INVALID_RESOURCE_ID 0x1203
#define GPU_RESP_ERR_INVALID_CONTEXT_ID 0x1204
#define GPU_RESP_ERR_INVALID_PARAMETER 0x1205
#define GPU_F_VIRGL (1ull << 0)
#define GPU_F_EDID (1ull << 1)
#define GPU_FORMAT_B8G8R8X8 2
#define GPU_HDR_LEN 24
#define GPU_DISPLAY_INFO_LEN (24 + 16 * 24)
#define GPU_CTRLQ 0
#define GPU_CURSORQ 1
/* No answer within the wait, or nothing written: */
#define GPU_TIMEOUT 0xffffffffu
#define GPU_NOTHING 0u

struct gpu_hdr {
    u32 type;
    u32 flags;
    u64 fence_id;
    u32 ctx_id;
    u8 ring_idx;
    u8 padding[3];
} PACKED;
struct gpu_rect {
    u32 x, y, width, height;
} PACKED;
struct gpu_mem_entry {
    u64 addr;
    u32 length;
    u32 padding;
} PACKED;

/* Sends req (reqlen bytes, one readable descriptor) on queue q with a
 * writable response buffer of resplen bytes (none when 0); returns the
 * response type, GPU_NOTHING when the device wrote nothing, GPU_TIMEOUT.
 * *used (may be NULL) gets the used length. */
u32 gpu_cmd(struct vdev *d, u16 q, const void *req, u32 reqlen, void *resp, u32 resplen, u32 *used);
/* Shorthands for well-formed commands; each returns the response type. */
u32 gpu_create_2d(struct vdev *d, u32 id, u32 format, u32 w, u32 h);
u32 gpu_unref(struct vdev *d, u32 id);
u32 gpu_attach(struct vdev *d, u32 id, const struct gpu_mem_entry *e, u32 n);
u32 gpu_detach(struct vdev *d, u32 id);
u32 gpu_transfer(struct vdev *d, u32 id, u32 x, u32 y, u32 w, u32 h, u64 offset);
u32 gpu_set_scanout(struct vdev *d, u32 scanout, u32 id, u32 x, u32 y, u32 w, u32 h);
u32 gpu_flush(struct vdev *d, u32 id, u32 x, u32 y, u32 w, u32 h);
u32 gpu_simple(struct vdev *d, u32 type, u32 arg);   /* header + one u32 + padding */
/* GET_DISPLAY_INFO; fills *w, *h of scanout 0 (may be NULL). */
u32 gpu_display_info(struct vdev *d, u32 *w, u32 *h);
u32 gpu_move_cursor(struct vdev *d, u32 scanout, u32 x, u32 y);

/* ---- rng.c ------------------------------------------------------------- */
/* One writable buffer; returns the used length, or -1. */
s32 rng_read(struct vdev *d, void *buf, u32 len);

#endif
