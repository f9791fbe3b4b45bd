/* virtio-pci (modern) and a polled split virtqueue. */
#include "pv.h"

#define CAP_VNDR 0x09
#define CAP_MSIX 0x11

int virtio_find(struct vdev *d, const char *name, u16 device_id, int nth)
{
    int slot = pci_find(VIRTIO_VENDOR, device_id, nth);
    memset(d, 0, sizeof(*d));
    d->name = name;
    d->slot = slot;
    d->device_id = device_id;
    if (slot < 0)
        return -1;
    u8 s = (u8)slot;
    d->bar = pci_read32(s, 0x10) & ~0xfu;
    /* Memory decoding and bus mastering on. */
    pci_write16(s, 0x04, pci_read16(s, 0x04) | 0x6);
    for (u8 pos = pci_find_cap(s, CAP_VNDR, 0); pos; pos = pci_find_cap(s, CAP_VNDR, pos)) {
        u8 type = pci_read8(s, pos + 3), bar = pci_read8(s, pos + 4);
        u32 off = pci_read32(s, pos + 8);
        if (bar != 0)
            continue;
        switch (type) {
        case 1:
            d->common = d->bar + off;
            break;
        case 2:
            d->notify_base = d->bar + off;
            d->notify_mult = pci_read32(s, pos + 16);
            break;
        case 3:
            d->isr = d->bar + off;
            break;
        case 4:
            d->devcfg = d->bar + off;
            break;
        }
    }
    u8 msix = pci_find_cap(s, CAP_MSIX, 0);
    if (msix) {
        d->msix_cap = msix;
        d->msix_vectors = (pci_read16(s, msix + 2) & 0x7ff) + 1;
        u32 table = pci_read32(s, msix + 4), pba = pci_read32(s, msix + 8);
        d->msix_table = d->bar + (table & ~7u);
        d->msix_pba = d->bar + (pba & ~7u);
    }
    if (!d->common || !d->notify_base || !d->isr || !d->devcfg)
        return -1;
    d->num_queues = mmio_read16(d->common + VCC_NUMQ);
    if (d->num_queues > VQ_MAX)
        d->num_queues = VQ_MAX;
    d->rings = dma_alloc(VQ_AREA * VQ_MAX, 4096);
    d->dev_features = vdev_read_features(d, 0);
    return 0;
}

u8 vdev_status(struct vdev *d) { return mmio_read8(d->common + VCC_STATUS); }
void vdev_set_status(struct vdev *d, u8 s) { mmio_write8(d->common + VCC_STATUS, s); }

int vdev_reset(struct vdev *d)
{
    vdev_set_status(d, 0);
    for (int i = 0; i < 1000; i++) {
        if (vdev_status(d) == 0)
            return 0;
        delay_ms(1);
    }
    return -1;
}

u64 vdev_read_features(struct vdev *d, u32 which)
{
    u32 sel = which ? VCC_GFSELECT : VCC_DFSELECT, val = which ? VCC_GF : VCC_DF;
    mmio_write32(d->common + sel, 0);
    u64 lo = mmio_read32(d->common + val);
    mmio_write32(d->common + sel, 1);
    u64 hi = mmio_read32(d->common + val);
    return lo | hi << 32;
}

int vdev_begin(struct vdev *d)
{
    if (vdev_reset(d))
        return -1;
    vdev_set_status(d, VIRTIO_S_ACKNOWLEDGE);
    vdev_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER);
    for (int i = 0; i < VQ_MAX; i++)
        memset(&d->vq[i], 0, sizeof(d->vq[i]));
    return 0;
}

int vdev_features(struct vdev *d, u64 want)
{
    u64 f = vdev_read_features(d, 0) & want;
    mmio_write32(d->common + VCC_GFSELECT, 0);
    mmio_write32(d->common + VCC_GF, (u32)f);
    mmio_write32(d->common + VCC_GFSELECT, 1);
    mmio_write32(d->common + VCC_GF, (u32)(f >> 32));
    d->drv_features = f;
    vdev_set_status(d, vdev_status(d) | VIRTIO_S_FEATURES_OK);
    return (vdev_status(d) & VIRTIO_S_FEATURES_OK) ? 0 : -1;
}

int vq_setup(struct vdev *d, u16 qi, u16 size)
{
    struct vq *q = &d->vq[qi];
    u8 *area = d->rings + (u32)qi * VQ_AREA;
    mmio_write16(d->common + VCC_QSELECT, qi);
    u16 max = mmio_read16(d->common + VCC_QSIZE);
    if (!max)
        return -1;
    if (!size || size > max)
        size = max;
    if (size > VQ_MAX_SIZE)
        size = VQ_MAX_SIZE;
    q->index = qi;
    q->size = size;
    q->desc = (struct vring_desc *)area;
    q->avail = (struct vring_avail *)(area + 0x1000);
    q->used = (struct vring_used *)(area + 0x2000);
    q->next_avail = 0;
    q->last_used = 0;
    /* Only the indexes and flags need clearing (descriptors and ring
     * entries are written before use). */
    q->avail->flags = q->avail->idx = 0;
    q->used->flags = q->used->idx = 0;
    q->notify = d->notify_base + mmio_read16(d->common + VCC_QNOTIFYOFF) * d->notify_mult;
    mmio_write16(d->common + VCC_QSIZE, size);
    mmio_write16(d->common + VCC_QMSIX, VIRTIO_NO_VECTOR);
    mmio_write64(d->common + VCC_QDESC, (u32)q->desc);
    mmio_write64(d->common + VCC_QAVAIL, (u32)q->avail);
    mmio_write64(d->common + VCC_QUSED, (u32)q->used);
    mmio_write16(d->common + VCC_QENABLE, 1);
    return mmio_read16(d->common + VCC_QSIZE) == size ? 0 : -1;
}

int vdev_driver_ok(struct vdev *d)
{
    vdev_set_status(d, vdev_status(d) | VIRTIO_S_DRIVER_OK);
    u8 s = vdev_status(d);
    return (s & VIRTIO_S_DRIVER_OK) && !(s & VIRTIO_S_NEEDS_RESET) ? 0 : -1;
}

int vdev_init(struct vdev *d, u64 want, u16 qsize)
{
    if (d->slot < 0)
        return -9;
    if (vdev_begin(d))
        return -1;
    if (vdev_features(d, want | VIRTIO_F_VERSION_1))
        return -2;
    mmio_write16(d->common + VCC_MSIX, VIRTIO_NO_VECTOR);
    for (u16 i = 0; i < d->num_queues; i++)
        if (vq_setup(d, i, qsize))
            return -3;
    if (vdev_driver_ok(d))
        return -4;
    return 0;
}

void vq_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
    struct vring_desc *dsc = &q->desc[i];
    dsc->addr = addr;
    dsc->len = len;
    dsc->flags = flags;
    dsc->next = next;
}

void vq_post(struct vq *q, u16 head)
{
    WRITE_ONCE(q->avail->ring[q->next_avail % q->size], head);
    mb();
    q->next_avail++;
    WRITE_ONCE(q->avail->idx, q->next_avail);
    mb();
}

void vq_kick(struct vdev *d, struct vq *q)
{
    mb();
    mmio_write16(q->notify, q->index);
    (void)d;
}

u16 vq_pending(struct vq *q)
{
    mb();
    return (u16)(READ_ONCE(q->used->idx) - q->last_used);
}

int vq_wait(struct vq *q, u16 n, u32 ms, struct vring_used_elem *out)
{
    u64 end = rdtsc() + tsc_per_ms * ms;
    while (vq_pending(q) < n) {
        if (rdtsc() > end)
            return -1;
        cpu_relax();
    }
    mb();
    for (u16 i = 0; i < n; i++) {
        struct vring_used_elem *e = &q->used->ring[(u16)(q->last_used + i) % q->size];
        if (out) {
            out[i].id = READ_ONCE(e->id);
            out[i].len = READ_ONCE(e->len);
        }
    }
    q->last_used += n;
    return 0;
}

s32 vq_run(struct vdev *d, struct vq *q, u16 head, u32 ms)
{
    struct vring_used_elem e;
    vq_post(q, head);
    vq_kick(d, q);
    if (vq_wait(q, 1, ms, &e))
        return -1;
    if (e.id != head)
        return -2;
    return (s32)e.len;
}
