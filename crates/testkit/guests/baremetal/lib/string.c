/* The C library functions the compiler may call, and a few more.
 *
 * Under an emulating hypervisor (kvm_pvm runs this guest one instruction
 * at a time) a REP string instruction costs about a third of a loop
 * iteration per element, so bulk operations use them. */
#include "pv.h"

void *memset(void *d, int c, size_t n)
{
    void *p = d;
    u32 v = (u8)c * 0x01010101u;
    if (!(((u32)d | n) & 3)) {
        size_t words = n / 4;
        __asm__ volatile("rep stosl" : "+D"(p), "+c"(words) : "a"(v) : "memory");
    } else {
        __asm__ volatile("rep stosb" : "+D"(p), "+c"(n) : "a"(v) : "memory");
    }
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    void *p = d;
    if (!(((u32)d | (u32)s | n) & 3)) {
        size_t words = n / 4;
        __asm__ volatile("rep movsl" : "+D"(p), "+S"(s), "+c"(words) : : "memory");
    } else {
        __asm__ volatile("rep movsb" : "+D"(p), "+S"(s), "+c"(n) : : "memory");
    }
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    if (p <= q || p >= q + n)
        return memcpy(d, s, n);
    while (n--)
        p[n] = q[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    if (!n)
        return 0;
    const u8 *p = a, *q = b;
    /* repe cmpsb stops after the first difference (or the end). */
    __asm__ volatile("repe cmpsb" : "+D"(q), "+S"(p), "+c"(n) : : "memory", "cc");
    return p[-1] - q[-1];
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a - (u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}
