/* Hostile cases: virtio-gpu (2D) control and cursor queues. Every case
 * frees the resources it made, so the host-memory cap case starts empty. */
#include "hostile.h"

#define G (&hv_gpu)
#define OK GPU_RESP_OK_NODATA
#define E_UNSPEC GPU_RESP_ERR_UNSPEC
#define E_OOM GPU_RESP_ERR_OUT_OF_MEMORY
#define E_SCANOUT GPU_RESP_ERR_INVALID_SCANOUT_ID
#define E_RES GPU_RESP_ERR_INVALID_RESOURCE_ID
#define E_PARAM GPU_RESP_ERR_INVALID_PARAMETER
#define FMT GPU_FORMAT_B8G8R8X8

static u8 rq[512] __attribute__((aligned(16)));
static u8 resp[1100] __attribute__((aligned(16)));

/* A zeroed request of type t; returns its body (after the header). */
static u32 *mk(u32 t)
{
    memset(rq, 0, sizeof(rq));
    ((struct gpu_hdr *)rq)->type = t;
    return (u32 *)(rq + GPU_HDR_LEN);
}

/* Sends rq (len bytes) on queue q with a resplen-byte response buffer. */
static u32 send(u16 q, u32 len, u32 resplen, u32 *used)
{
    return gpu_cmd(G, q, rq, len, resp, resplen, used);
}

#define EXPECT_T(got, want, what)                                                            \
    do {                                                                                     \
        u32 g_ = (got);                                                                      \
        CHECK(g_ == (u32)(want), "%s: answered %x, want %x", what, g_, (u32)(want));         \
    } while (0)

static void unknown_command(void)
{
    static const u32 types[] = {0, 0x00ff, 0x010e, 0x0999, 0x1100, 0x0302, 0xffffffff};
    for (u32 i = 0; i < ARRAY_SIZE(types); i++) {
        mk(types[i]);
        EXPECT_T(send(GPU_CTRLQ, 64, 24, NULL), E_UNSPEC, "unknown type");
    }
}

static void short_requests(void)
{
    mk(GPU_CMD_GET_DISPLAY_INFO);
    EXPECT_T(send(GPU_CTRLQ, 10, 24, NULL), E_UNSPEC, "10-byte request");
    mk(GPU_CMD_RESOURCE_CREATE_2D);
    EXPECT_T(send(GPU_CTRLQ, 24, 24, NULL), E_UNSPEC, "CREATE_2D without its body");
    mk(GPU_CMD_TRANSFER_TO_HOST_2D);
    EXPECT_T(send(GPU_CTRLQ, 55, 24, NULL), E_UNSPEC, "TRANSFER one byte short");
    mk(GPU_CMD_RESOURCE_ATTACH_BACKING)[1] = 1;
    EXPECT_T(send(GPU_CTRLQ, 40, 24, NULL), E_UNSPEC, "ATTACH with half an entry");
    mk(GPU_CMD_MOVE_CURSOR);
    EXPECT_T(send(GPU_CURSORQ, 30, 24, NULL), E_UNSPEC, "short MOVE_CURSOR");
}

static void resource_id_zero(void)
{
    EXPECT_T(gpu_create_2d(G, 0, FMT, 64, 64), E_RES, "create id 0");
    EXPECT_T(gpu_unref(G, 0), E_RES, "unref id 0");
}

static void duplicate_id(void)
{
    EXPECT_T(gpu_create_2d(G, 1, FMT, 64, 64), OK, "create");
    EXPECT_T(gpu_create_2d(G, 1, FMT, 32, 32), E_RES, "create again");
    EXPECT_T(gpu_unref(G, 1), OK, "unref");
    EXPECT_T(gpu_unref(G, 1), E_RES, "unref twice");
}

static void huge_sizes(void)
{
    EXPECT_T(gpu_create_2d(G, 2, FMT, 16384, 16384), E_OOM, "16384x16384 (1 GiB)");
    EXPECT_T(gpu_create_2d(G, 2, FMT, 4097, 4096), E_OOM, "just over the 64 MiB cap");
    EXPECT_T(gpu_create_2d(G, 2, FMT, 0x40000000, 1), E_PARAM, "stride overflows u32");
    EXPECT_T(gpu_create_2d(G, 2, FMT, 0xffffffff, 0xffffffff), E_PARAM, "4G x 4G");
    EXPECT_T(gpu_create_2d(G, 2, FMT, 0, 16), E_PARAM, "width 0");
    EXPECT_T(gpu_create_2d(G, 2, FMT, 16, 0), E_PARAM, "height 0");
    EXPECT_T(gpu_unref(G, 2), E_RES, "nothing was created");
}

static void unknown_format(void)
{
    static const u32 fmts[] = {0, 5, 66, 100, 999, 0xffffffff};
    for (u32 i = 0; i < ARRAY_SIZE(fmts); i++)
        EXPECT_T(gpu_create_2d(G, 3, fmts[i], 64, 64), E_PARAM, "unknown format");
    EXPECT_T(gpu_unref(G, 3), E_RES, "nothing was created");
}

/* A 64x64 resource with 16 KiB of backing; returns the backing. */
static u8 *res_with_backing(u32 id)
{
    u8 *back = dma_alloc(64 * 64 * 4, 4096);
    if (gpu_create_2d(G, id, FMT, 64, 64) != OK)
        return NULL;
    struct gpu_mem_entry e = {(u32)back, 64 * 64 * 4, 0};
    if (gpu_attach(G, id, &e, 1) != OK)
        return NULL;
    return back;
}

static void attach_entry_counts(void)
{
    EXPECT_T(gpu_create_2d(G, 4, FMT, 64, 64), OK, "create");
    u32 *p = mk(GPU_CMD_RESOURCE_ATTACH_BACKING);
    p[0] = 4, p[1] = 0xffffffff;
    EXPECT_T(send(GPU_CTRLQ, 32, 24, NULL), E_PARAM, "nr_entries 0xffffffff");
    p[1] = 16385;
    EXPECT_T(send(GPU_CTRLQ, 32, 24, NULL), E_PARAM, "nr_entries 16385");
    p[1] = 16384;
    EXPECT_T(send(GPU_CTRLQ, 32 + 16, 24, NULL), E_UNSPEC, "16384 entries announced, one sent");
    p[1] = 0;
    EXPECT_T(send(GPU_CTRLQ, 32, 24, NULL), E_PARAM, "no entries");
    EXPECT_T(gpu_unref(G, 4), OK, "unref");
}

static void attach_outside_ram(void)
{
    EXPECT_T(gpu_create_2d(G, 5, FMT, 64, 64), OK, "create");
    struct gpu_mem_entry bad[] = {
        {ABOVE_RAM, 4096, 0},
        {0xfffffffffffff000ull, 0x2000, 0},
        {hv_gpu.bar, 4096, 0},
        {PCI_ECAM_BASE, 4096, 0},
        {0x100000, 0xffffffff, 0},
        {ram_top - 2048, 4096, 0},
    };
    for (u32 i = 0; i < ARRAY_SIZE(bad); i++)
        CHECK(gpu_attach(G, 5, &bad[i], 1) == E_PARAM, "entry %llx+%x accepted", bad[i].addr,
              bad[i].length);
    /* One good entry and one bad: all refused. */
    struct gpu_mem_entry mixed[2] = {{0x2000000, 4096, 0}, {ABOVE_RAM, 4096, 0}};
    EXPECT_T(gpu_attach(G, 5, mixed, 2), E_PARAM, "a good and a bad entry");
    EXPECT_T(gpu_attach(G, 0x7777, mixed, 1), E_RES, "attach to an unknown resource");
    EXPECT_T(gpu_attach(G, 5, mixed, 1), OK, "a good entry");
    EXPECT_T(gpu_attach(G, 5, mixed, 1), E_UNSPEC, "attach twice");
    EXPECT_T(gpu_detach(G, 5), OK, "detach");
    EXPECT_T(gpu_detach(G, 5), E_UNSPEC, "detach twice");
    EXPECT_T(gpu_unref(G, 5), OK, "unref");
}

static void transfer_bounds(void)
{
    CHECK(res_with_backing(6), "resource with backing");
    EXPECT_T(gpu_transfer(G, 6, 60, 0, 10, 10, 0), E_PARAM, "rectangle past the right edge");
    EXPECT_T(gpu_transfer(G, 6, 0, 0, 64, 65, 0), E_PARAM, "rectangle past the bottom");
    EXPECT_T(gpu_transfer(G, 6, 0xffffffff, 0, 2, 1, 0), E_PARAM, "x + width overflows");
    EXPECT_T(gpu_transfer(G, 6, 0, 0xfffffff0, 1, 0x20, 0), E_PARAM, "y + height overflows");
    EXPECT_T(gpu_transfer(G, 6, 0, 0, 1, 1, 0xffffffffffffff00ull), E_PARAM, "offset near u64::MAX");
    EXPECT_T(gpu_transfer(G, 6, 0, 0, 1, 1, 64 * 64 * 4), E_PARAM, "offset at the backing's end");
    EXPECT_T(gpu_transfer(G, 6, 0, 0, 64, 64, 4), E_PARAM, "whole image 4 bytes in");
    EXPECT_T(gpu_transfer(G, 6, 0, 0, 1, 1, 64 * 64 * 4 - 4), OK, "last pixel");
    EXPECT_T(gpu_transfer(G, 6, 0, 0, 64, 64, 0), OK, "whole image");
    EXPECT_T(gpu_transfer(G, 6, 3, 5, 0, 0, 0), OK, "empty rectangle");
    EXPECT_T(gpu_transfer(G, 0x7777, 0, 0, 1, 1, 0), E_RES, "unknown resource");
    EXPECT_T(gpu_unref(G, 6), OK, "unref");
}

static void transfer_no_backing(void)
{
    EXPECT_T(gpu_create_2d(G, 7, FMT, 64, 64), OK, "create");
    EXPECT_T(gpu_transfer(G, 7, 0, 0, 64, 64, 0), E_UNSPEC, "transfer without backing");
    EXPECT_T(gpu_detach(G, 7), E_UNSPEC, "detach without backing");
    EXPECT_T(gpu_unref(G, 7), OK, "unref");
}

static void bad_scanout(void)
{
    CHECK(res_with_backing(8), "resource");
    EXPECT_T(gpu_set_scanout(G, 1, 8, 0, 0, 64, 64), E_SCANOUT, "scanout 1 of 1");
    EXPECT_T(gpu_set_scanout(G, 16, 8, 0, 0, 64, 64), E_SCANOUT, "scanout 16");
    EXPECT_T(gpu_set_scanout(G, 0xffffffff, 0, 0, 0, 0, 0), E_SCANOUT, "scanout u32::MAX");
    u32 *p = mk(GPU_CMD_GET_EDID);
    p[0] = 1;
    EXPECT_T(send(GPU_CTRLQ, 32, sizeof(resp), NULL), E_SCANOUT, "GET_EDID scanout 1");
    p = mk(GPU_CMD_MOVE_CURSOR);
    p[0] = 99;
    EXPECT_T(send(GPU_CURSORQ, 56, 24, NULL), E_SCANOUT, "MOVE_CURSOR scanout 99");
    EXPECT_T(gpu_unref(G, 8), OK, "unref");
}

static void scanout_rect(void)
{
    CHECK(res_with_backing(9), "resource");
    EXPECT_T(gpu_set_scanout(G, 0, 9, 0, 0, 65, 64), E_PARAM, "wider than the resource");
    EXPECT_T(gpu_set_scanout(G, 0, 9, 10, 10, 64, 64), E_PARAM, "offset past the resource");
    EXPECT_T(gpu_set_scanout(G, 0, 9, 0, 0, 0, 0), E_PARAM, "empty rectangle");
    EXPECT_T(gpu_set_scanout(G, 0, 9, 0xffffffff, 0, 2, 2), E_PARAM, "x + width overflows");
    EXPECT_T(gpu_set_scanout(G, 0, 0x7777, 0, 0, 64, 64), E_RES, "unknown resource");
    EXPECT_T(gpu_set_scanout(G, 0, 9, 0, 0, 64, 64), OK, "the whole resource");
    EXPECT_T(gpu_flush(G, 9, 1000, 1000, 5, 5), OK, "flush outside the scanout");
    EXPECT_T(gpu_flush(G, 9, 0, 0, 0xffffffff, 0xffffffff), OK, "flush of a huge rectangle");
    EXPECT_T(gpu_set_scanout(G, 0, 0, 0, 0, 0, 0), OK, "scanout off");
    EXPECT_T(gpu_unref(G, 9), OK, "unref");
}

static void unknown_ids(void)
{
    EXPECT_T(gpu_flush(G, 0x7777, 0, 0, 1, 1), E_RES, "flush");
    EXPECT_T(gpu_flush(G, 0, 0, 0, 1, 1), E_RES, "flush of id 0");
    EXPECT_T(gpu_unref(G, 0x7777), E_RES, "unref");
    EXPECT_T(gpu_detach(G, 0x7777), E_RES, "detach");
}

static void unref_while_shown(void)
{
    CHECK(res_with_backing(10), "resource");
    EXPECT_T(gpu_transfer(G, 10, 0, 0, 64, 64, 0), OK, "transfer");
    EXPECT_T(gpu_set_scanout(G, 0, 10, 0, 0, 64, 64), OK, "show");
    EXPECT_T(gpu_flush(G, 10, 0, 0, 64, 64), OK, "flush");
    EXPECT_T(gpu_unref(G, 10), OK, "unref while shown");
    EXPECT_T(gpu_flush(G, 10, 0, 0, 64, 64), E_RES, "flush after unref");
    EXPECT_T(gpu_transfer(G, 10, 0, 0, 64, 64, 0), E_RES, "transfer after unref");
    EXPECT_T(gpu_set_scanout(G, 0, 0, 0, 0, 0, 0), OK, "scanout off");
}

/* 3D commands on a 2D device: refused, never executed. */
static void three_d_on_2d(void)
{
    u32 *p = mk(GPU_CMD_CTX_CREATE);
    ((struct gpu_hdr *)rq)->ctx_id = 1;
    p[0] = 4, p[1] = 0;
    memcpy(&p[2], "evil", 4);
    EXPECT_T(send(GPU_CTRLQ, 96, 24, NULL), E_UNSPEC, "CTX_CREATE");
    mk(GPU_CMD_CTX_DESTROY);
    EXPECT_T(send(GPU_CTRLQ, 24, 24, NULL), E_UNSPEC, "CTX_DESTROY");
    p = mk(GPU_CMD_SUBMIT_3D);
    p[0] = 16;
    EXPECT_T(send(GPU_CTRLQ, 48, 24, NULL), E_UNSPEC, "SUBMIT_3D");
    p[0] = 5;
    EXPECT_T(send(GPU_CTRLQ, 48, 24, NULL), E_PARAM, "SUBMIT_3D of 5 bytes");
    p[0] = 0xfffffffc;
    EXPECT_T(send(GPU_CTRLQ, 48, 24, NULL), E_PARAM, "SUBMIT_3D of 4 GiB");
    p = mk(GPU_CMD_RESOURCE_CREATE_3D);
    p[0] = 11, p[1] = 2, p[2] = 1, p[4] = 64, p[5] = 64, p[6] = 1, p[7] = 1;
    EXPECT_T(send(GPU_CTRLQ, 72, 24, NULL), E_UNSPEC, "RESOURCE_CREATE_3D");
    p = mk(GPU_CMD_RESOURCE_CREATE_BLOB);
    p[0] = 12, p[1] = 1, p[6] = 4096;
    EXPECT_T(send(GPU_CTRLQ, 56, 24, NULL), E_UNSPEC, "RESOURCE_CREATE_BLOB");
    p = mk(GPU_CMD_RESOURCE_MAP_BLOB);
    p[0] = 12;
    EXPECT_T(send(GPU_CTRLQ, 40, 24, NULL), E_UNSPEC, "RESOURCE_MAP_BLOB");
    p = mk(GPU_CMD_SET_SCANOUT_BLOB);
    p[2] = 64, p[3] = 64, p[5] = 12, p[6] = 64, p[7] = 64, p[8] = FMT;
    EXPECT_T(send(GPU_CTRLQ, 24 + 72, 24, NULL), E_UNSPEC, "SET_SCANOUT_BLOB");
    EXPECT_T(gpu_simple(G, GPU_CMD_RESOURCE_ASSIGN_UUID, 1), E_UNSPEC, "RESOURCE_ASSIGN_UUID");
    EXPECT_T(gpu_unref(G, 11), E_RES, "no 3D resource was made");
    EXPECT_T(gpu_unref(G, 12), E_RES, "no blob was made");
}

static void capsets(void)
{
    EXPECT_T(gpu_simple(G, GPU_CMD_GET_CAPSET_INFO, 0), E_UNSPEC, "GET_CAPSET_INFO 0");
    EXPECT_T(gpu_simple(G, GPU_CMD_GET_CAPSET_INFO, 0xffffffff), E_UNSPEC, "GET_CAPSET_INFO max");
    u32 *p = mk(GPU_CMD_GET_CAPSET);
    p[0] = 1, p[1] = 1;
    EXPECT_T(send(GPU_CTRLQ, 32, sizeof(resp), NULL), E_UNSPEC, "GET_CAPSET");
}

static void edid(void)
{
    u32 used;
    mk(GPU_CMD_GET_EDID);
    EXPECT_T(send(GPU_CTRLQ, 32, sizeof(resp), &used), GPU_RESP_OK_EDID, "GET_EDID 0");
    CHECK_EQ(used, 24 + 8 + 1024, "EDID response length");
    static const u8 magic[8] = {0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0};
    CHECK(!memcmp(resp + 32, magic, 8), "EDID header");
    mk(GPU_CMD_GET_EDID)[0] = 0xffffffff;
    EXPECT_T(send(GPU_CTRLQ, 32, sizeof(resp), NULL), E_SCANOUT, "GET_EDID u32::MAX");
    mk(GPU_CMD_GET_EDID);
    EXPECT_T(send(GPU_CTRLQ, 32, 100, &used), E_UNSPEC, "GET_EDID into 100 bytes");
    CHECK_EQ(used, 24, "used length of the short answer");
}

/* Without VIRTIO_GPU_F_EDID negotiated GET_EDID is refused. */
static void edid_not_negotiated(void)
{
    CHECK(vdev_init(G, VIRTIO_F_VERSION_1, 0) == 0, "init without EDID");
    mk(GPU_CMD_GET_EDID);
    EXPECT_T(send(GPU_CTRLQ, 32, sizeof(resp), NULL), E_UNSPEC, "GET_EDID");
    REINIT(G);
}

static void response_too_small(void)
{
    u32 used;
    mk(GPU_CMD_GET_DISPLAY_INFO);
    EXPECT_T(send(GPU_CTRLQ, 24, 24, &used), E_UNSPEC, "display info into 24 bytes");
    CHECK_EQ(used, 24, "used length");
    memset(resp, 0xcc, 16);
    gpu_cmd(G, GPU_CTRLQ, rq, 24, resp, 8, &used);
    CHECK(used == 0 && resp[0] == 0xcc && resp[7] == 0xcc, "8-byte buffer: used %u", used);
    mk(GPU_CMD_RESOURCE_CREATE_2D);
    u32 *p = (u32 *)(rq + 24);
    p[0] = 13, p[1] = FMT, p[2] = 4, p[3] = 4;
    gpu_cmd(G, GPU_CTRLQ, rq, 40, resp, 23, &used);
    CHECK_EQ(used, 0, "23-byte buffer");
    EXPECT_T(gpu_create_2d(G, 13, FMT, 4, 4), E_RES, "the command ran without room to answer");
    EXPECT_T(gpu_unref(G, 13), OK, "unref");
}

/* Response buffers the device must not write: read-only, outside RAM, in
 * MMIO, across the end of RAM. */
static void response_unwritable(void)
{
    struct vq *q = &hv_gpu.vq[GPU_CTRLQ];
    mk(GPU_CMD_GET_DISPLAY_INFO);
    memset(resp, 0xcc, 64);
    vq_desc(q, 0, (u32)rq, 24, VRING_DESC_F_NEXT, 1);
    vq_desc(q, 1, (u32)resp, GPU_DISPLAY_INFO_LEN, VRING_DESC_F_NEXT, 2);
    vq_desc(q, 2, (u32)resp + 512, 64, 0, 0);
    CHECK_EQ(vq_run(G, q, 0, WAIT_MS), 0, "read-only response buffer");
    CHECK(resp[0] == 0xcc, "read-only buffer written");
    u32 bad[4] = {ABOVE_RAM, hv_gpu.bar, PCI_ECAM_BASE, ram_top - 100};
    for (u32 i = 0; i < 4; i++) {
        vq_desc(q, 0, (u32)rq, 24, VRING_DESC_F_NEXT, 1);
        vq_desc(q, 1, bad[i], GPU_DISPLAY_INFO_LEN, VRING_DESC_F_WRITE, 0);
        s32 n = vq_run(G, q, 0, WAIT_MS);
        CHECK(n == 0, "response buffer at %x: used %d", bad[i], n);
    }
    CHECK(mmio_read8(hv_gpu.common + VCC_STATUS) & VIRTIO_S_DRIVER_OK, "own BAR scribbled on");
}

static void misordered(void)
{
    struct vq *q = &hv_gpu.vq[GPU_CTRLQ];
    mk(GPU_CMD_GET_DISPLAY_INFO);
    vq_desc(q, 0, (u32)resp, 24, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
    vq_desc(q, 1, (u32)rq, 24, 0, 0);
    resp[0] = 0;
    CHECK_EQ(vq_run(G, q, 0, WAIT_MS), 24, "used length");
    CHECK_EQ(((struct gpu_hdr *)resp)->type, E_UNSPEC, "answer");
}

/* A request in three pieces, and one read from a 32 MiB readable buffer. */
static void request_layouts(void)
{
    struct vq *q = &hv_gpu.vq[GPU_CTRLQ];
    mk(GPU_CMD_GET_DISPLAY_INFO);
    for (u16 i = 0; i < 3; i++)
        vq_desc(q, i, (u32)rq + 8 * i, 8, VRING_DESC_F_NEXT, i + 1);
    vq_desc(q, 3, (u32)resp, GPU_DISPLAY_INFO_LEN, VRING_DESC_F_WRITE, 0);
    CHECK_EQ(vq_run(G, q, 0, WAIT_MS), GPU_DISPLAY_INFO_LEN, "split request");
    CHECK_EQ(((struct gpu_hdr *)resp)->type, GPU_RESP_OK_DISPLAY_INFO, "split request answer");
    u8 *big = dma_alloc(32u << 20, 4096);
    memset(big, 0, 64);
    vq_desc(q, 0, (u32)big, 32u << 20, VRING_DESC_F_NEXT, 1);
    vq_desc(q, 1, (u32)resp, 24, VRING_DESC_F_WRITE, 0);
    CHECK_EQ(vq_run(G, q, 0, WAIT_MS), 24, "32 MiB request");
    CHECK_EQ(((struct gpu_hdr *)resp)->type, E_UNSPEC, "answer to 32 MiB of zeros");
}

/* Create 4 MiB resources until the 64 MiB cap refuses one; free them.
 * Then the same filled with pixels (each backing costs a little of the
 * cap too), one shown; then one resource of the whole cap, shown. */
static void hostmem_cap(void)
{
    u32 n = 0;
    for (;;) {
        u32 t = gpu_create_2d(G, 100 + n, FMT, 1024, 1024);
        if (t == E_OOM)
            break;
        CHECK(t == OK, "create %u answered %x", n, t);
        n++;
        CHECK(n <= 64, "no cap after %u resources of 4 MiB", n);
    }
    CHECK_EQ(n, 16, "4 MiB resources under a 64 MiB cap");
    EXPECT_T(gpu_create_2d(G, 99, FMT, 1, 1), E_OOM, "even 4 bytes");
    for (u32 i = 0; i < n; i++)
        EXPECT_T(gpu_unref(G, 100 + i), OK, "unref");
    u32 len = 1024 * 1024 * 4;
    u8 *pix = dma_alloc(len, 4096);
    struct gpu_mem_entry e = {(u32)pix, len, 0};
    u32 filled = 0;
    for (;;) {
        u32 id = 200 + filled, t = gpu_create_2d(G, id, FMT, 1024, 1024);
        if (t == OK)
            t = gpu_attach(G, id, &e, 1);
        if (t == E_OOM)
            break;
        CHECK(t == OK, "filled resource %u answered %x", filled, t);
        EXPECT_T(gpu_transfer(G, id, 0, 0, 1024, 1024, 0), OK, "fill");
        filled++;
        CHECK(filled <= 16, "no cap after %u filled resources", filled);
    }
    CHECK_EQ(filled, 15, "filled 4 MiB resources (with backing) under the cap");
    EXPECT_T(gpu_set_scanout(G, 0, 200, 0, 0, 1024, 1024), OK, "show one");
    EXPECT_T(gpu_flush(G, 200, 0, 0, 1024, 1024), OK, "flush it");
    gpu_unref(G, 200 + filled); /* made before its backing was refused */
    for (u32 i = 0; i < filled; i++)
        EXPECT_T(gpu_unref(G, 200 + i), OK, "unref filled");
    EXPECT_T(gpu_create_2d(G, 99, FMT, 4096, 4096), OK, "64 MiB once freed");
    EXPECT_T(gpu_set_scanout(G, 0, 99, 0, 0, 4096, 4096), OK, "show it");
    EXPECT_T(gpu_flush(G, 99, 0, 0, 4096, 4096), OK, "flush it");
    EXPECT_T(gpu_set_scanout(G, 0, 0, 0, 0, 0, 0), OK, "scanout off");
    EXPECT_T(gpu_unref(G, 99), OK, "unref");
    hnote("%u x 4 MiB", n);
}

/* 1x1 resources until the count cap refuses one, then every one freed:
 * batches of 128 commands filling the whole descriptor table (set up
 * once; each batch only renumbers the resources). */
static void resource_count_cap(void)
{
    struct vq *q = &hv_gpu.vq[GPU_CTRLQ];
    const u32 batch = 128;
    u32 *reqs = dma_alloc(batch * 48, 16);
    u32 *resps = dma_alloc(batch * 24, 16);
    memset(reqs, 0, batch * 48);
    for (u32 i = 0; i < batch; i++) {
        u32 *r = reqs + i * 12;
        r[7] = FMT, r[8] = 1, r[9] = 1;
        vq_desc(q, (u16)(2 * i), (u32)r, 40, VRING_DESC_F_NEXT, (u16)(2 * i + 1));
        vq_desc(q, (u16)(2 * i + 1), (u32)(resps + i * 6), 24, VRING_DESC_F_WRITE, 0);
    }
    /* Any 128 consecutive ring slots name every head once. */
    for (u32 j = 0; j < q->size; j++)
        q->avail->ring[j] = (u16)(2 * (j % batch));
    const u32 first = 1000;
    u32 made = 0, refused = 0;
    for (int pass = 0; pass < 2; pass++) {
        u32 type = pass == 0 ? GPU_CMD_RESOURCE_CREATE_2D : GPU_CMD_RESOURCE_UNREF;
        for (u32 i = 0; i < batch; i++)
            reqs[i * 12] = type;
        u32 total = pass == 0 ? 65536 + batch : made;
        for (u32 done = 0; done < total; done += batch) {
            for (u32 i = 0; i < batch; i++) {
                reqs[i * 12 + 6] = first + done + i;
                resps[i * 6] = 0;
            }
            mb();
            q->next_avail += (u16)batch;
            WRITE_ONCE(q->avail->idx, q->next_avail);
            vq_kick(G, q);
            CHECK(vq_wait(q, (u16)batch, 10000, NULL) == 0, "batch at %u not answered", done);
            for (u32 i = 0; i < batch; i++) {
                u32 t = resps[i * 6];
                if (pass == 1)
                    CHECK(t == OK, "unref %u answered %x", first + done + i, t);
                else if (t == OK)
                    made++;
                else if (t == E_OOM)
                    refused++;
                else
                    CHECK(0, "create %u answered %x", first + done + i, t);
            }
        }
        CHECK_EQ(made, 65536, "resources made");
        CHECK_EQ(refused, batch, "refused");
    }
    hnote("%u made, %u refused, all freed", made, refused);
}

static void cursor_queue(void)
{
    u32 *p = mk(GPU_CMD_UPDATE_CURSOR);
    p[4] = 0x7777;
    EXPECT_T(send(GPU_CURSORQ, 56, 24, NULL), E_RES, "cursor from an unknown resource");
    EXPECT_T(gpu_create_2d(G, 14, FMT, 128, 128), OK, "create 128x128");
    p = mk(GPU_CMD_UPDATE_CURSOR);
    p[4] = 14;
    EXPECT_T(send(GPU_CURSORQ, 56, 24, NULL), E_PARAM, "a 128x128 cursor");
    p = mk(GPU_CMD_UPDATE_CURSOR);
    p[0] = 7;
    EXPECT_T(send(GPU_CURSORQ, 56, 24, NULL), E_SCANOUT, "cursor on scanout 7");
    u32 used;
    mk(GPU_CMD_UPDATE_CURSOR);
    gpu_cmd(G, GPU_CURSORQ, rq, 56, NULL, 0, &used);
    CHECK_EQ(used, 0, "used length without a response buffer");
    EXPECT_T(gpu_unref(G, 14), OK, "unref");
}

/* Both queues take any command. */
static void control_commands_on_cursorq(void)
{
    u32 *p = mk(GPU_CMD_RESOURCE_CREATE_2D);
    p[0] = 15, p[1] = FMT, p[2] = 16, p[3] = 16;
    EXPECT_T(send(GPU_CURSORQ, 40, 24, NULL), OK, "CREATE_2D on the cursor queue");
    mk(GPU_CMD_GET_DISPLAY_INFO);
    EXPECT_T(send(GPU_CURSORQ, 24, GPU_DISPLAY_INFO_LEN, NULL), GPU_RESP_OK_DISPLAY_INFO,
             "GET_DISPLAY_INFO on the cursor queue");
    p = mk(GPU_CMD_RESOURCE_UNREF);
    p[0] = 15;
    EXPECT_T(send(GPU_CURSORQ, 32, 24, NULL), OK, "UNREF on the cursor queue");
}

/* 16384 entries (the limit), all on one page: accepted and usable. */
static void backing_max_entries(void)
{
    u32 n = 16384, len = 32 + n * 16;
    u8 *page = dma_alloc(4096, 4096);
    EXPECT_T(gpu_create_2d(G, 16, FMT, 64, 64), OK, "create");
    u8 *r = dma_alloc(len, 16);
    memset(r, 0, 32);
    ((struct gpu_hdr *)r)->type = GPU_CMD_RESOURCE_ATTACH_BACKING;
    u32 *p = (u32 *)(r + 24);
    p[0] = 16, p[1] = n;
    struct gpu_mem_entry *e = (struct gpu_mem_entry *)(r + 32);
    for (u32 i = 0; i < n; i++)
        e[i] = (struct gpu_mem_entry){(u32)page, 4096, 0};
    EXPECT_T(gpu_cmd(G, GPU_CTRLQ, r, len, resp, 24, NULL), OK, "16384 entries");
    EXPECT_T(gpu_transfer(G, 16, 0, 0, 64, 64, 0), OK, "transfer through them");
    EXPECT_T(gpu_detach(G, 16), OK, "detach");
    EXPECT_T(gpu_unref(G, 16), OK, "unref");
}

static const struct hcase cases[] = {
    {"gpu-unknown-command", unknown_command, D_GPU},
    {"gpu-short-requests", short_requests, D_GPU},
    {"gpu-resource-id-zero", resource_id_zero, D_GPU},
    {"gpu-duplicate-id", duplicate_id, D_GPU},
    {"gpu-huge-sizes", huge_sizes, D_GPU},
    {"gpu-unknown-format", unknown_format, D_GPU},
    {"gpu-attach-entry-counts", attach_entry_counts, D_GPU},
    {"gpu-attach-outside-ram", attach_outside_ram, D_GPU},
    {"gpu-transfer-bounds", transfer_bounds, D_GPU},
    {"gpu-transfer-without-backing", transfer_no_backing, D_GPU},
    {"gpu-bad-scanout-id", bad_scanout, D_GPU},
    {"gpu-scanout-rect", scanout_rect, D_GPU},
    {"gpu-unknown-ids", unknown_ids, D_GPU},
    {"gpu-unref-while-shown", unref_while_shown, D_GPU},
    {"gpu-3d-on-2d", three_d_on_2d, D_GPU},
    {"gpu-capsets-on-2d", capsets, D_GPU},
    {"gpu-edid", edid, D_GPU},
    {"gpu-edid-not-negotiated", edid_not_negotiated, D_GPU},
    {"gpu-response-too-small", response_too_small, D_GPU},
    {"gpu-response-unwritable", response_unwritable, D_GPU},
    {"gpu-misordered", misordered, D_GPU},
    {"gpu-request-layouts", request_layouts, D_GPU},
    {"gpu-hostmem-cap", hostmem_cap, D_GPU},
    {"gpu-resource-count-cap", resource_count_cap, D_GPU},
    {"gpu-cursor-queue", cursor_queue, D_GPU},
    {"gpu-control-on-cursor-queue", control_commands_on_cursorq, D_GPU},
    {"gpu-backing-16384-entries", backing_max_entries, D_GPU},
};
HGROUP(hostile_gpu, cases);
