/* virtio-rng: one writable buffer per request. */
#include "pv.h"

s32 rng_read(struct vdev *d, void *buf, u32 len)
{
    struct vq *q = &d->vq[0];
    vq_desc(q, 0, (u32)buf, len, VRING_DESC_F_WRITE, 0);
    return vq_run(d, q, 0, WAIT_MS);
}
