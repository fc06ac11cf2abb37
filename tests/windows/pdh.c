/* Test scaffolding for running the Windows agent under Wine, whose
 * PdhEnumObjectsW is an unimplemented stub (calling it ends the process).
 * The system probe's library calls it when it sets up its CPU counters;
 * this stand-in answers every performance-counter call with "no such
 * object", so the agent runs and reports no CPU load figures. Never
 * shipped: real Windows has its own. */
#include <windows.h>

#define PDH_CSTATUS_NO_OBJECT ((LONG)0xC0000BB8L)

LONG WINAPI PdhOpenQueryW(LPCWSTR source, DWORD_PTR user, HANDLE *query)
{
    if (query) *query = NULL;
    return PDH_CSTATUS_NO_OBJECT;
}

LONG WINAPI PdhAddEnglishCounterW(HANDLE query, LPCWSTR path, DWORD_PTR user, HANDLE *counter)
{
    if (counter) *counter = NULL;
    return PDH_CSTATUS_NO_OBJECT;
}

LONG WINAPI PdhCloseQuery(HANDLE query) { return 0; }
LONG WINAPI PdhRemoveCounter(HANDLE counter) { return 0; }
LONG WINAPI PdhCollectQueryData(HANDLE query) { return PDH_CSTATUS_NO_OBJECT; }

LONG WINAPI PdhEnumObjectsW(LPCWSTR source, LPCWSTR machine, LPWSTR list, LPDWORD size,
                            DWORD detail, BOOL refresh)
{
    if (size) *size = 0;
    return PDH_CSTATUS_NO_OBJECT;
}

LONG WINAPI PdhGetFormattedCounterValue(HANDLE counter, DWORD format, LPDWORD type, void *value)
{
    return PDH_CSTATUS_NO_OBJECT;
}

LONG WINAPI PdhGetFormattedCounterArrayW(HANDLE counter, DWORD format, LPDWORD size,
                                         LPDWORD count, void *items)
{
    if (size) *size = 0;
    if (count) *count = 0;
    return PDH_CSTATUS_NO_OBJECT;
}
