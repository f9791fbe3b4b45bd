/* virtio-gpu: requests on the control and cursor queues. */
#include "pv.h"

static u8 gpu_req[256] __attribute__((aligned(16)));
static u8 gpu_resp[GPU_DISPLAY_INFO_LEN + 64] __attribute__((aligned(16)));

u32 gpu_cmd(struct vdev *d, u16 qi, const void *req, u32 reqlen, void *resp, u32 resplen, u32 *used)
{
    struct vq *q = &d->vq[qi];
    if (resp && resplen) {
        vq_desc(q, 0, (u32)req, reqlen, VRING_DESC_F_NEXT, 1);
        vq_desc(q, 1, (u32)resp, resplen, VRING_DESC_F_WRITE, 0);
    } else {
        vq_desc(q, 0, (u32)req, reqlen, 0, 0);
    }
    s32 n = vq_run(d, q, 0, WAIT_MS);
    if (used)
        *used = (u32)n;
    if (n < 0)
        return GPU_TIMEOUT;
    if (n < 4 || !resp)
        return GPU_NOTHING;
    return ((struct gpu_hdr *)resp)->type;
}

/* A zeroed request of this type in gpu_req; returns its body. */
static u32 *hdr(u32 type)
{
    memset(gpu_req, 0, sizeof(gpu_req));
    struct gpu_hdr *h = (struct gpu_hdr *)gpu_req;
    h->type = type;
    return (u32 *)(gpu_req + GPU_HDR_LEN);
}

static u32 send(struct vdev *d, u32 len)
{
    return gpu_cmd(d, GPU_CTRLQ, gpu_req, len, gpu_resp, GPU_HDR_LEN, NULL);
}

u32 gpu_create_2d(struct vdev *d, u32 id, u32 format, u32 w, u32 h)
{
    u32 *p = hdr(GPU_CMD_RESOURCE_CREATE_2D);
    p[0] = id, p[1] = format, p[2] = w, p[3] = h;
    return send(d, 40);
}

u32 gpu_simple(struct vdev *d, u32 type, u32 arg)
{
    u32 *p = hdr(type);
    p[0] = arg;
    return send(d, 32);
}

u32 gpu_unref(struct vdev *d, u32 id) { return gpu_simple(d, GPU_CMD_RESOURCE_UNREF, id); }
u32 gpu_detach(struct vdev *d, u32 id) { return gpu_simple(d, GPU_CMD_RESOURCE_DETACH_BACKING, id); }

u32 gpu_attach(struct vdev *d, u32 id, const struct gpu_mem_entry *e, u32 n)
{
    /* Header and entries in one readable buffer. */
    u32 len = 32 + n * 16, mark = dma_mark();
    u8 *req = dma_alloc(len, 16);
    memset(req, 0, 32);
    struct gpu_hdr *h = (struct gpu_hdr *)req;
    h->type = GPU_CMD_RESOURCE_ATTACH_BACKING;
    u32 *p = (u32 *)(req + GPU_HDR_LEN);
    p[0] = id, p[1] = n;
    memcpy(req + 32, e, n * 16);
    u32 t = gpu_cmd(d, GPU_CTRLQ, req, len, gpu_resp, GPU_HDR_LEN, NULL);
    dma_release(mark);
    return t;
}

u32 gpu_transfer(struct vdev *d, u32 id, u32 x, u32 y, u32 w, u32 h, u64 offset)
{
    u32 *p = hdr(GPU_CMD_TRANSFER_TO_HOST_2D);
    p[0] = x, p[1] = y, p[2] = w, p[3] = h;
    p[4] = (u32)offset, p[5] = (u32)(offset >> 32);
    p[6] = id;
    return send(d, 56);
}

u32 gpu_set_scanout(struct vdev *d, u32 scanout, u32 id, u32 x, u32 y, u32 w, u32 h)
{
    u32 *p = hdr(GPU_CMD_SET_SCANOUT);
    p[0] = x, p[1] = y, p[2] = w, p[3] = h, p[4] = scanout, p[5] = id;
    return send(d, 48);
}

u32 gpu_flush(struct vdev *d, u32 id, u32 x, u32 y, u32 w, u32 h)
{
    u32 *p = hdr(GPU_CMD_RESOURCE_FLUSH);
    p[0] = x, p[1] = y, p[2] = w, p[3] = h, p[4] = id;
    return send(d, 48);
}

u32 gpu_display_info(struct vdev *d, u32 *w, u32 *h)
{
    hdr(GPU_CMD_GET_DISPLAY_INFO);
    u32 used = 0;
    u32 t = gpu_cmd(d, GPU_CTRLQ, gpu_req, GPU_HDR_LEN, gpu_resp, GPU_DISPLAY_INFO_LEN, &used);
    if (t == GPU_RESP_OK_DISPLAY_INFO && used != GPU_DISPLAY_INFO_LEN)
        return GPU_NOTHING;
    /* pmodes[0]: rect (x, y, width, height), enabled, flags */
    u32 *m = (u32 *)(gpu_resp + GPU_HDR_LEN);
    if (w)
        *w = m[2];
    if (h)
        *h = m[3];
    return t;
}

u32 gpu_move_cursor(struct vdev *d, u32 scanout, u32 x, u32 y)
{
    u32 *p = hdr(GPU_CMD_MOVE_CURSOR);
    p[0] = scanout, p[1] = x, p[2] = y;
    return gpu_cmd(d, GPU_CURSORQ, gpu_req, 56, gpu_resp, GPU_HDR_LEN, NULL);
}
