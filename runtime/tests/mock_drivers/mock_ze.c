/* A stand-in for libze_loader.so.1 with the entry points linrec's Level Zero backend calls.
 * Device and host USM are host memory; commands run when they are appended, and launches run
 * the fixture kernels on the host (kernels.h). It checks what a real driver relies on: the
 * stype of every struct, that copies only touch memory allocated through it (never a plain
 * host pointer), the compute queue group, argument indices and sizes, and that nothing is
 * left alive when the context is destroyed (abort() otherwise, which fails the test).
 * Built by tests/all/mock_drivers.rs; never shipped. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef uint32_t ze_result_t;
#define ZE_RESULT_SUCCESS 0u
#define ZE_RESULT_NOT_READY 1u
#define ZE_RESULT_ERROR_MODULE_BUILD_FAILURE 0x70000004u
#define ZE_RESULT_ERROR_INVALID_ARGUMENT 0x78000004u
#define ZE_RESULT_ERROR_INVALID_NULL_HANDLE 0x78000005u
#define ZE_RESULT_ERROR_INVALID_KERNEL_NAME 0x78000011u
#define ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX 0x78000015u
#define ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE 0x78000016u
#define ZE_RESULT_ERROR_INVALID_SIZE 0x78000008u

typedef struct { uint32_t stype; void *pNext; } Header;
#define STYPE(p, want) do { if (!(p) || ((const Header *)(p))->stype != (want)) return ZE_RESULT_ERROR_INVALID_ARGUMENT; } while (0)

static int driver_obj, device_obj, context_obj, list_obj;
static int live_allocs, live_modules, live_kernels, live_events, live_pools, live_lists;

/* ---- memory: a registry of allocations, so copies can be checked ---- */
typedef struct { char *base; size_t len; } Alloc;
static Alloc allocs[256];

static int find_alloc(const void *p, size_t n) {
    for (int i = 0; i < 256; i++)
        if (allocs[i].base && (const char *)p >= allocs[i].base &&
            (const char *)p + n <= allocs[i].base + allocs[i].len)
            return i;
    return -1;
}
static ze_result_t do_alloc(size_t size, size_t align, void **out) {
    if (size == 0 || align == 0 || (align & (align - 1))) return ZE_RESULT_ERROR_INVALID_SIZE;
    for (int i = 0; i < 256; i++)
        if (!allocs[i].base) {
            allocs[i].base = aligned_alloc(align, (size + align - 1) / align * align);
            allocs[i].len = size;
            *out = allocs[i].base;
            live_allocs++;
            return ZE_RESULT_SUCCESS;
        }
    return ZE_RESULT_ERROR_INVALID_SIZE;
}

ze_result_t zeInit(uint32_t flags) { return flags == 1 ? ZE_RESULT_SUCCESS : ZE_RESULT_ERROR_INVALID_ARGUMENT; }
ze_result_t zeDriverGet(uint32_t *count, void **drivers) {
    if (drivers) { if (*count >= 1) drivers[0] = &driver_obj; *count = 1; }
    else *count = 1;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeDriverGetApiVersion(void *d, uint32_t *v) {
    if (d != &driver_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    *v = (1u << 16) | 3u;
    return ZE_RESULT_SUCCESS;
}
typedef struct { uint32_t stype; void *pNext; uint8_t uuid[16]; uint32_t driverVersion; } DriverProps;
ze_result_t zeDriverGetProperties(void *d, DriverProps *p) {
    STYPE(p, 0x1);
    if (d != &driver_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    p->driverVersion = (1u << 24) | (3u << 16) | 26918u;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeDeviceGet(void *d, uint32_t *count, void **devices) {
    if (d != &driver_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    if (devices) { if (*count >= 1) devices[0] = &device_obj; }
    *count = 1;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeDeviceGetProperties(void *dev, void *p) {
    STYPE(p, 0x3);
    if (dev != &device_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    char *b = p;
    *(uint32_t *)(b + 16) = 1;      /* type: GPU */
    *(uint32_t *)(b + 20) = 0x8086; /* vendorId */
    strcpy(b + 112, "linrec mock Level Zero GPU");
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeDeviceGetComputeProperties(void *dev, void *p) {
    STYPE(p, 0x4);
    (void)dev;
    *(uint32_t *)((char *)p + 16) = 1024;  /* maxTotalGroupSize */
    *(uint32_t *)((char *)p + 44) = 65536; /* maxSharedLocalMemory */
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeDeviceGetModuleProperties(void *dev, void *p) {
    STYPE(p, 0x5);
    (void)dev;
    *(uint32_t *)((char *)p + 16) = (1u << 16) | 4u; /* SPIR-V 1.4 */
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeDeviceGetMemoryProperties(void *dev, uint32_t *count, void *p) {
    (void)dev;
    if (p) {
        if (*count < 1) return ZE_RESULT_ERROR_INVALID_SIZE;
        STYPE(p, 0x7);
        *(uint64_t *)((char *)p + 32) = (uint64_t)1 << 30; /* totalSize */
    }
    *count = 1;
    return ZE_RESULT_SUCCESS;
}
/* Two groups: copy-only first, so the backend must look for the compute one. */
typedef struct { uint32_t stype; void *pNext; uint32_t flags; size_t fill; uint32_t numQueues; } GroupProps;
ze_result_t zeDeviceGetCommandQueueGroupProperties(void *dev, uint32_t *count, GroupProps *p) {
    (void)dev;
    if (p) {
        if (*count < 2) return ZE_RESULT_ERROR_INVALID_SIZE;
        STYPE(&p[0], 0x6);
        STYPE(&p[1], 0x6);
        p[0].flags = 2; p[0].fill = 4; p[0].numQueues = 2; /* COPY */
        p[1].flags = 1; p[1].fill = 4; p[1].numQueues = 4; /* COMPUTE */
    }
    *count = 2;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeContextCreate(void *d, const void *desc, void **ctx) {
    STYPE(desc, 0xd);
    if (d != &driver_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    *ctx = &context_obj;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeContextDestroy(void *ctx) {
    if (ctx != &context_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    if (live_allocs || live_modules || live_kernels || live_events || live_pools || live_lists) {
        fprintf(stderr, "mock_ze: context destroyed with live objects: %d allocations, %d modules, "
                "%d kernels, %d events, %d pools, %d lists\n", live_allocs, live_modules,
                live_kernels, live_events, live_pools, live_lists);
        abort();
    }
    return ZE_RESULT_SUCCESS;
}
typedef struct { uint32_t stype; const void *pNext; uint32_t ordinal, index, flags, mode, priority; } QueueDesc;
ze_result_t zeCommandListCreateImmediate(void *ctx, void *dev, const QueueDesc *d, void **list) {
    STYPE(d, 0xe);
    if (ctx != &context_obj || dev != &device_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    if (d->ordinal != 1 || d->mode != 2) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    *list = &list_obj;
    live_lists++;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeCommandListDestroy(void *list) {
    if (list != &list_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    live_lists--;
    return ZE_RESULT_SUCCESS;
}

/* ---- events ---- */
typedef struct { int signaled; } Event;
static int pool_obj;
ze_result_t zeEventPoolCreate(void *ctx, const void *desc, uint32_t ndev, void **devs, void **pool) {
    STYPE(desc, 0x10);
    if (ctx != &context_obj || ndev != 1 || devs[0] != &device_obj) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    if (!(*(const uint32_t *)((const char *)desc + 16) & 1)) return ZE_RESULT_ERROR_INVALID_ARGUMENT; /* host visible */
    *pool = &pool_obj;
    live_pools++;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeEventPoolDestroy(void *pool) {
    if (pool != &pool_obj || live_events) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    live_pools--;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeEventCreate(void *pool, const void *desc, void **event) {
    STYPE(desc, 0x11);
    if (pool != &pool_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    *event = calloc(1, sizeof(Event));
    live_events++;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeEventDestroy(void *e) { free(e); live_events--; return ZE_RESULT_SUCCESS; }
ze_result_t zeEventHostSynchronize(void *e, uint64_t timeout) {
    (void)timeout;
    return ((Event *)e)->signaled ? ZE_RESULT_SUCCESS : ZE_RESULT_NOT_READY;
}
ze_result_t zeEventHostReset(void *e) { ((Event *)e)->signaled = 0; return ZE_RESULT_SUCCESS; }

/* ---- commands: executed on append ---- */
ze_result_t zeCommandListAppendBarrier(void *list, void *signal, uint32_t nwait, void **waits) {
    (void)waits;
    if (list != &list_obj || nwait != 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    if (signal) ((Event *)signal)->signaled = 1;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeCommandListAppendMemoryCopy(void *list, void *dst, const void *src, size_t n,
                                          void *signal, uint32_t nwait, void **waits) {
    (void)waits;
    if (list != &list_obj || nwait != 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    /* Both ends must be memory the device reaches: allocated through this driver. */
    if (find_alloc(dst, n) < 0 || find_alloc(src, n) < 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    memcpy(dst, src, n);
    if (signal) ((Event *)signal)->signaled = 1;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeCommandListAppendMemoryFill(void *list, void *dst, const void *pattern, size_t psize,
                                          size_t n, void *signal, uint32_t nwait, void **waits) {
    (void)waits;
    if (list != &list_obj || nwait != 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    if (psize == 0 || psize > 4 || (psize & (psize - 1)) || n % psize || find_alloc(dst, n) < 0)
        return ZE_RESULT_ERROR_INVALID_SIZE;
    for (size_t i = 0; i < n; i += psize) memcpy((char *)dst + i, pattern, psize);
    if (signal) ((Event *)signal)->signaled = 1;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeMemAllocDevice(void *ctx, const void *desc, size_t size, size_t align, void *dev, void **out) {
    STYPE(desc, 0x15);
    if (ctx != &context_obj || dev != &device_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    return do_alloc(size, align, out);
}
ze_result_t zeMemAllocHost(void *ctx, const void *desc, size_t size, size_t align, void **out) {
    STYPE(desc, 0x16);
    if (ctx != &context_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    return do_alloc(size, align, out);
}
ze_result_t zeMemFree(void *ctx, void *p) {
    if (ctx != &context_obj) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
    for (int i = 0; i < 256; i++)
        if (allocs[i].base == p) {
            free(p);
            allocs[i].base = NULL;
            live_allocs--;
            return ZE_RESULT_SUCCESS;
        }
    return ZE_RESULT_ERROR_INVALID_ARGUMENT;
}

/* ---- modules and kernels ---- */
typedef struct { int live_kernels; } Module;
typedef struct { char text[64]; } BuildLog;
typedef struct { uint32_t stype; const void *pNext; uint32_t format; size_t size; const uint8_t *input;
                 const char *flags; const void *constants; } ModuleDesc;
ze_result_t zeModuleCreate(void *ctx, void *dev, const ModuleDesc *d, void **module, void **log) {
    STYPE(d, 0x1b);
    if (ctx != &context_obj || dev != &device_obj || d->format != 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    int ok = d->size >= 20 && d->size % 4 == 0 && *(const uint32_t *)d->input == 0x07230203u;
    /* The tests' corrupt module: a valid header, then words of 0xFF. */
    for (size_t i = 20; ok && i + 16 <= d->size; i += 4) {
        static const uint8_t ff[16] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                       0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
        if (memcmp(d->input + i, ff, 16) == 0) ok = 0;
    }
    if (log) {
        BuildLog *l = calloc(1, sizeof *l);
        strcpy(l->text, ok ? "" : "mock: invalid SPIR-V");
        *log = l;
    }
    if (!ok) return ZE_RESULT_ERROR_MODULE_BUILD_FAILURE;
    *module = calloc(1, sizeof(Module));
    live_modules++;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeModuleDestroy(void *m) {
    if (((Module *)m)->live_kernels) {
        fprintf(stderr, "mock_ze: module destroyed before its kernels\n");
        abort();
    }
    free(m);
    live_modules--;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeModuleBuildLogGetString(void *log, size_t *size, char *out) {
    BuildLog *l = log;
    size_t need = strlen(l->text) + 1;
    if (out) { if (*size < need) return ZE_RESULT_ERROR_INVALID_SIZE; memcpy(out, l->text, need); }
    *size = need;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeModuleBuildLogDestroy(void *log) { free(log); return ZE_RESULT_SUCCESS; }
ze_result_t zeModuleGetKernelNames(void *m, uint32_t *count, const char **names) {
    (void)m;
    if (names) for (uint32_t i = 0; i < 3 && i < *count; i++) names[i] = MOCK_KERNELS[i];
    *count = 3;
    return ZE_RESULT_SUCCESS;
}
typedef struct {
    Module *module;
    int which;
    uint32_t group[3];
    int set[5];
    uint64_t values[5];
} Kernel;
typedef struct { uint32_t stype; const void *pNext; uint32_t flags; const char *name; } KernelDesc;
ze_result_t zeKernelCreate(void *m, const KernelDesc *d, void **k) {
    STYPE(d, 0x1d);
    int which = mock_kernel_index(d->name);
    if (which < 0) return ZE_RESULT_ERROR_INVALID_KERNEL_NAME;
    Kernel *kk = calloc(1, sizeof *kk);
    kk->module = m;
    kk->which = which;
    ((Module *)m)->live_kernels++;
    live_kernels++;
    *k = kk;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeKernelDestroy(void *k) {
    ((Kernel *)k)->module->live_kernels--;
    free(k);
    live_kernels--;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeKernelGetProperties(void *k, void *p) {
    STYPE(p, 0x1e);
    *(uint32_t *)((char *)p + 16) = (uint32_t)MOCK_NUM_ARGS[((Kernel *)k)->which];
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeKernelSetGroupSize(void *k, uint32_t x, uint32_t y, uint32_t z) {
    if (x == 0 || y != 1 || z != 1 || x > 1024) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    Kernel *kk = k;
    kk->group[0] = x; kk->group[1] = y; kk->group[2] = z;
    return ZE_RESULT_SUCCESS;
}
ze_result_t zeKernelSetArgumentValue(void *k, uint32_t index, size_t size, const void *value) {
    Kernel *kk = k;
    if ((int)index >= MOCK_NUM_ARGS[kk->which]) return ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX;
    if (value == NULL || size != (size_t)MOCK_ARG_SIZES[kk->which][index])
        return ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE;
    kk->values[index] = 0;
    memcpy(&kk->values[index], value, size); /* copied now, as the API promises */
    kk->set[index] = 1;
    return ZE_RESULT_SUCCESS;
}
typedef struct { uint32_t x, y, z; } GroupCount;
ze_result_t zeCommandListAppendLaunchKernel(void *list, void *k, const GroupCount *g, void *signal,
                                            uint32_t nwait, void **waits) {
    (void)waits;
    Kernel *kk = k;
    if (list != &list_obj || nwait != 0 || g->y != 1 || g->z != 1 || kk->group[0] == 0)
        return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    const void *args[5];
    for (int i = 0; i < MOCK_NUM_ARGS[kk->which]; i++) {
        if (!kk->set[i]) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
        args[i] = &kk->values[i];
    }
    if (mock_run_kernel(kk->which, args, g->x, kk->group[0]) != 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    if (signal) ((Event *)signal)->signaled = 1;
    return ZE_RESULT_SUCCESS;
}
