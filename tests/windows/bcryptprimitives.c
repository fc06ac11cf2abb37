/* Test scaffolding for running the Windows agent under Wine 8.0, which
 * lacks ProcessPrng (added in Wine 8.13). Rust's standard library draws
 * its random numbers from it; this stands in with RtlGenRandom. Never
 * shipped: real Windows has its own. */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
