/* mode=hostile: a guest that drives every device with malformed input.
 *
 * Each case does one hostile thing, checks the answer the device must give,
 * and the runner then checks that every device the case touched still
 * answers a well-formed request. A device that marks itself DEVICE_NEEDS_RESET
 * is only accepted where the case expects it; the runner then resets it
 * and says so on the case's line. Output, one line per case:
 *
 *   CASE <n> <name>: ok [(<note>)]
 *   CASE <n> <name>: FAIL <why>
 *   HOSTILE DONE cases=<N> failed=<M>
 */
#include "hostile.h"

struct vdev hv_blk, hv_ro, hv_gpu, hv_rng, hv_kbd, hv_tab;
u32 gpu_width, gpu_height;

static char fail_msg[200];
static char note_msg[120];
static int failed;

void hfail(const char *fmt, ...)
{
    if (failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fail_msg, sizeof(fail_msg), fmt, ap);
    va_end(ap);
    failed = 1;
}

void hnote(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(note_msg, sizeof(note_msg), fmt, ap);
    va_end(ap);
}

int hfailed(void) { return failed; }

u64 std_features(struct vdev *d)
{
    switch (d->device_id) {
    case VIRTIO_ID_BLOCK:
        return VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | BLK_F_RO | (1ull << 9) /* FLUSH */;
    case VIRTIO_ID_GPU:
        return VIRTIO_F_VERSION_1 | GPU_F_EDID;
    default:
        return VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC;
    }
}

int reinit(struct vdev *d) { return vdev_init(d, std_features(d), 0); }

int health(struct vdev *d, char *why, int len)
{
    if (d == &hv_blk)
        return blk_check_sector(d, 0, 0, why, len);
    if (d == &hv_ro)
        return blk_check_sector(d, 1, 0, why, len);
    if (d == &hv_gpu) {
        u32 w = 0, h = 0, t = gpu_display_info(d, &w, &h);
        if (t != GPU_RESP_OK_DISPLAY_INFO || w != gpu_width || h != gpu_height) {
            snprintf(why, len, "gpu: GET_DISPLAY_INFO answered %x (%ux%u)", t, w, h);
            return -1;
        }
        t = gpu_move_cursor(d, 0, 10, 10);
        if (t != GPU_RESP_OK_NODATA) {
            snprintf(why, len, "gpu: MOVE_CURSOR on the cursor queue answered %x", t);
            return -1;
        }
        return 0;
    }
    if (d == &hv_rng) {
        static u8 buf[64] __attribute__((aligned(16)));
        memset(buf, 0, sizeof(buf));
        s32 n = rng_read(d, buf, sizeof(buf));
        u8 any = 0;
        for (u32 i = 0; i < sizeof(buf); i++)
            any |= buf[i];
        if (n != (s32)sizeof(buf) || !any) {
            snprintf(why, len, "rng: read of 64 bytes gave %d bytes%s", n, any ? "" : ", all zero");
            return -1;
        }
        return 0;
    }
    if (d == &hv_kbd || d == &hv_tab)
        return input_health(d, why, len);
    return 0;
}

static struct vdev *const devices[] = {&hv_blk, &hv_ro, &hv_gpu, &hv_rng, &hv_kbd, &hv_tab};

/* Checks the devices in `devs` after a case. */
static void check_devices(u32 devs)
{
    char why[160];
    for (u32 i = 0; i < ARRAY_SIZE(devices); i++) {
        struct vdev *d = devices[i];
        if (!(devs & (1u << i)) || failed)
            continue;
        u8 s = vdev_status(d);
        if (s & VIRTIO_S_NEEDS_RESET) {
            hfail("%s set DEVICE_NEEDS_RESET (status %x)", d->name, s);
            return;
        }
        u8 running = VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK |
                     VIRTIO_S_DRIVER_OK;
        if ((s & running) != running) {
            hfail("%s was left not running (status %x)", d->name, s);
            return;
        }
        for (u16 q = 0; q < d->num_queues; q++) {
            u16 stray = vq_pending(&d->vq[q]);
            if (stray) {
                hfail("%s queue %u: %u used entries nobody waited for", d->name, q, stray);
                return;
            }
        }
        if (health(d, why, sizeof(why))) {
            hfail("no longer answers: %s", why);
            return;
        }
    }
}

static void hostile_main(const char *cmdline)
{
    (void)cmdline;
    static const struct {
        struct vdev *d;
        const char *name;
        u16 id;
        int nth;
    } want[] = {
        {&hv_blk, "blk-rw", VIRTIO_ID_BLOCK, 0},
        {&hv_ro, "blk-ro", VIRTIO_ID_BLOCK, 1},
        {&hv_gpu, "gpu", VIRTIO_ID_GPU, 0},
        {&hv_rng, "rng", VIRTIO_ID_RNG, 0},
        {&hv_kbd, "input-kbd", VIRTIO_ID_INPUT, 0},
        {&hv_tab, "input-tab", VIRTIO_ID_INPUT, 1},
    };
    for (u32 i = 0; i < ARRAY_SIZE(want); i++) {
        if (virtio_find(want[i].d, want[i].name, want[i].id, want[i].nth) ||
            reinit(want[i].d)) {
            printf("HOSTILE setup: %s not found or not working (slot %d)\n", want[i].name,
                   want[i].d->slot);
            printf("HOSTILE DONE cases=0 failed=1\n");
            return;
        }
    }
    if (!(hv_ro.dev_features & BLK_F_RO) || (hv_blk.dev_features & BLK_F_RO)) {
        printf("HOSTILE setup: expected the first disk writable, the second read-only\n");
        printf("HOSTILE DONE cases=0 failed=1\n");
        return;
    }
    if (gpu_display_info(&hv_gpu, &gpu_width, &gpu_height) != GPU_RESP_OK_DISPLAY_INFO) {
        printf("HOSTILE setup: GET_DISPLAY_INFO failed\n");
        printf("HOSTILE DONE cases=0 failed=1\n");
        return;
    }
    for (u32 i = 0; i < 2; i++) {
        struct vdev *d = i ? &hv_tab : &hv_kbd;
        char why[120];
        if (input_health(d, why, sizeof(why))) {
            printf("HOSTILE setup: %s\n", why);
            printf("HOSTILE DONE cases=0 failed=1\n");
            return;
        }
    }
    printf("HOSTILE devices: blk-rw slot %d (%llu sectors), blk-ro slot %d, gpu slot %d "
           "(%ux%u), rng slot %d, keyboard slot %d, tablet slot %d\n",
           hv_blk.slot, blk_capacity(&hv_blk), hv_ro.slot, hv_gpu.slot, gpu_width, gpu_height,
           hv_rng.slot, hv_kbd.slot, hv_tab.slot);

    const struct hgroup *groups[] = {&hostile_pci,   &hostile_transport, &hostile_chain,
                                     &hostile_blk,   &hostile_gpu,       &hostile_misc,
                                     &hostile_input};
    char only[64];
    int have_only = cmdline_get("case", only, sizeof(only)) > 0;
    int n = 0, ran = 0, nfailed = 0;
    u64 start = now_ms();
    for (u32 g = 0; g < ARRAY_SIZE(groups); g++) {
        for (int i = 0; i < groups[g]->count; i++) {
            const struct hcase *c = &groups[g]->cases[i];
            n++;
            if (have_only && strcmp(only, c->name))
                continue;
            ran++;
            failed = 0;
            fail_msg[0] = note_msg[0] = 0;
            u32 mark = dma_mark();
            c->run();
            dma_release(mark);
            check_devices(c->devs);
            if (failed) {
                nfailed++;
                printf("CASE %d %s: FAIL %s\n", n, c->name, fail_msg);
                /* Start the next case from working devices. */
                for (u32 d = 0; d < ARRAY_SIZE(devices); d++)
                    reinit(devices[d]);
            } else if (note_msg[0]) {
                printf("CASE %d %s: ok (%s)\n", n, c->name, note_msg);
            } else {
                printf("CASE %d %s: ok\n", n, c->name);
            }
        }
    }
    printf("HOSTILE DONE cases=%d failed=%d ms=%u\n", ran, nfailed, (u32)(now_ms() - start));
}

PV_MODE("hostile", hostile_main);
