/* The hostile mode: shared state of its cases (see hostile.c). */
#ifndef HOSTILE_H
#define HOSTILE_H
#include "pv.h"

/* The devices under test, found at start: the writable disk (the first
 * virtio-blk), the read-only disk (the second), the GPU, the RNG, the
 * keyboard and the tablet (the first and second virtio-input). */
extern struct vdev hv_blk, hv_ro, hv_gpu, hv_rng, hv_kbd, hv_tab;
/* Scanout 0's size as the GPU first reported it. */
extern u32 gpu_width, gpu_height;

/* What a case touches: the runner checks these devices answer a
 * well-formed request afterwards. */
#define D_BLK 1u
#define D_RO 2u
#define D_GPU 4u
#define D_RNG 8u
#define D_KBD 16u
#define D_TAB 32u
#define D_INPUT (D_KBD | D_TAB)
#define D_ALL (D_BLK | D_RO | D_GPU | D_RNG | D_INPUT)

struct hcase {
    const char *name;
    void (*run)(void);
    u32 devs;
};
struct hgroup {
    const char *name;
    const struct hcase *cases;
    int count;
};
#define HGROUP(n, arr) const struct hgroup n = {#n, arr, (int)ARRAY_SIZE(arr)}
extern const struct hgroup hostile_pci, hostile_transport, hostile_chain, hostile_blk,
    hostile_gpu, hostile_misc, hostile_input;

/* The first failure of the running case (later ones are dropped). */
void hfail(const char *fmt, ...) PRINTF(1, 2);
/* A remark printed after "ok". */
void hnote(const char *fmt, ...) PRINTF(1, 2);
int hfailed(void);
#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            hfail(__VA_ARGS__);                                                            \
            return;                                                                        \
        }                                                                                  \
    } while (0)
#define CHECK_EQ(got, want, what)                                                          \
    do {                                                                                   \
        u64 g_ = (u64)(got), w_ = (u64)(want);                                             \
        if (g_ != w_) {                                                                    \
            hfail("%s: got %llx, want %llx", what, g_, w_);                                \
            return;                                                                        \
        }                                                                                  \
    } while (0)

/* The driver features each device is normally run with. */
u64 std_features(struct vdev *d);
/* Reset and initialize with std_features at the maximum queue size. */
int reinit(struct vdev *d);
/* Reinitializes and records a failure if that does not work. */
#define REINIT(d)                                                                          \
    do {                                                                                   \
        int r_ = reinit(d);                                                                \
        CHECK(r_ == 0, "%s: re-initialization failed (step %d)", (d)->name, r_);           \
    } while (0)
/* A well-formed request to d; 0, or -1 with the reason recorded in why. */
int health(struct vdev *d, char *why, int len);
/* virtio-input (hostile_input.c): the name the device must report, and its
 * health check: re-initialized, four event buffers stay unused (no host
 * input is sent), an LED event on the status queue is used, the name reads
 * back through select 1 (ID_NAME). */
const char *input_name(struct vdev *d);
int input_health(struct vdev *d, char *why, int len);

/* Addresses a device must refuse. */
#define ABOVE_RAM 0x08000000u /* 128 MiB: no RAM with --memory 64M */
#endif
