/* COM1 output (polled 16550) and a small printf. */
#include "pv.h"

void serial_init(void)
{
    outb(COM1 + 1, 0x00); /* no interrupts */
    outb(COM1 + 3, 0x80); /* DLAB */
    outb(COM1 + 0, 0x01); /* 115200 */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); /* 8N1 */
    outb(COM1 + 2, 0x07); /* FIFO on, cleared */
    outb(COM1 + 4, 0x03); /* DTR, RTS */
}

void serial_putc(char c)
{
    /* The emulated UART's transmitter is always ready: no polling of the
     * line status (every port access is an exit). */
    outb(COM1, (u8)c);
}

void serial_puts(const char *s)
{
    while (*s) {
        if (*s == '\n')
            serial_putc('\r');
        serial_putc(*s++);
    }
}

struct out {
    char *buf;
    size_t size;
    size_t len;
};

static void emit(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

/* v /= base, returning the remainder (no libgcc: x86 divl twice). */
static u32 divmod(u64 *v, u32 base)
{
    u32 hi = (u32)(*v >> 32), lo = (u32)*v, qhi = hi / base, qlo, rem;
    __asm__("divl %4" : "=a"(qlo), "=d"(rem) : "a"(lo), "d"(hi % base), "rm"(base));
    *v = ((u64)qhi << 32) | qlo;
    return rem;
}

static void emit_num(struct out *o, u64 v, u32 base, int width, char pad, int neg)
{
    char tmp[24];
    int n = 0;
    do {
        u32 digit = divmod(&v, base);
        tmp[n++] = (char)(digit < 10 ? '0' + digit : 'a' + digit - 10);
    } while (v);
    if (neg)
        tmp[n++] = '-';
    for (int i = n; i < width; i++)
        emit(o, pad);
    while (n)
        emit(o, tmp[--n]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = {buf, size, 0};
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(&o, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0')
            pad = '0', fmt++;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l')
            longs++, fmt++;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int n = (int)strlen(s);
            for (int i = n; i < width; i++)
                emit(&o, ' ');
            while (*s)
                emit(&o, *s++);
            break;
        }
        case 'c':
            emit(&o, (char)va_arg(ap, int));
            break;
        case 'd': {
            s64 v = longs >= 2 ? va_arg(ap, s64) : va_arg(ap, s32);
            emit_num(&o, v < 0 ? (u64)-v : (u64)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
            emit_num(&o, longs >= 2 ? va_arg(ap, u64) : va_arg(ap, u32), 10, width, pad, 0);
            break;
        case 'x':
            emit_num(&o, longs >= 2 ? va_arg(ap, u64) : va_arg(ap, u32), 16, width, pad, 0);
            break;
        case 'p':
            emit(&o, '0');
            emit(&o, 'x');
            emit_num(&o, (u32)va_arg(ap, void *), 16, 8, '0', 0);
            break;
        case '%':
            emit(&o, '%');
            break;
        default:
            emit(&o, '?');
            break;
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = 0;
    return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void printf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    serial_puts(buf);
}
