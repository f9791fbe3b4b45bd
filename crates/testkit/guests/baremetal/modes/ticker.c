/* mode=ticker: prints "TICK <n>" every `ms=` milliseconds (default 5)
 * forever, so the host can tell a running guest from a paused one. */
#include "pv.h"

static void ticker_main(const char *cmdline)
{
    (void)cmdline;
    char buf[16];
    u32 ms = 5;
    if (cmdline_get("ms", buf, sizeof(buf)) > 0) {
        ms = 0;
        for (const char *p = buf; *p >= '0' && *p <= '9'; p++)
            ms = ms * 10 + (u32)(*p - '0');
    }
    for (u32 n = 1;; n++) {
        printf("TICK %u\n", n);
        delay_ms(ms);
    }
}
PV_MODE("ticker", ticker_main);
