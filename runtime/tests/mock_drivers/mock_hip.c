/* A stand-in for libamdhip64 with the entry points linrec's HIP backend calls: "device"
 * memory is host memory and launches run the fixture kernels on the host (kernels.h), reading
 * their arguments through kernelParams exactly as HIP does. It exists so that the backend's
 * whole path (loading, attributes, copies, fills, modules, launches, teardown) runs in tests
 * on machines without an AMD GPU. Built by tests/all/mock_drivers.rs; never shipped. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef int hipError_t;
enum {
    hipSuccess = 0,
    hipErrorInvalidValue = 1,
    hipErrorInvalidDevice = 101,
    hipErrorInvalidImage = 200,
    hipErrorNotFound = 500,
    hipErrorLaunchFailure = 719,
};

/* The code object the mock accepts: an ELF64 header for EM_AMDGPU, then this marker at 64. */
#define MOCK_MARKER "linrec-mock-hsaco"

static int current_device = -1;

const char *hipGetErrorName(hipError_t e) {
    switch (e) {
    case hipSuccess: return "hipSuccess";
    case hipErrorInvalidValue: return "hipErrorInvalidValue";
    case hipErrorInvalidDevice: return "hipErrorInvalidDevice";
    case hipErrorInvalidImage: return "hipErrorInvalidImage";
    case hipErrorNotFound: return "hipErrorNotFound";
    case hipErrorLaunchFailure: return "hipErrorLaunchFailure";
    default: return "hipErrorUnknown";
    }
}
const char *hipGetErrorString(hipError_t e) { return e == hipSuccess ? "no error" : "mock error"; }
hipError_t hipInit(unsigned flags) { return flags == 0 ? hipSuccess : hipErrorInvalidValue; }
hipError_t hipRuntimeGetVersion(int *v) { *v = 60241134; return hipSuccess; }
hipError_t hipGetDeviceCount(int *n) { *n = 1; return hipSuccess; }
hipError_t hipSetDevice(int d) {
    if (d != 0) return hipErrorInvalidDevice;
    current_device = d;
    return hipSuccess;
}
/* Every call below needs a current device, as the backend promises by calling hipSetDevice. */
#define NEED_DEVICE() do { if (current_device != 0) return hipErrorInvalidDevice; } while (0)

hipError_t hipDeviceGetAttribute(int *v, int attr, int dev) {
    if (dev != 0) return hipErrorInvalidDevice;
    switch (attr) {
    case 56: *v = 1024; return hipSuccess;  /* hipDeviceAttributeMaxThreadsPerBlock */
    case 74: *v = 65536; return hipSuccess; /* hipDeviceAttributeMaxSharedMemoryPerBlock */
    default: return hipErrorInvalidValue;
    }
}
hipError_t hipDeviceGetName(char *name, int len, int dev) {
    if (dev != 0 || len < 1) return hipErrorInvalidValue;
    snprintf(name, (size_t)len, "%s", "linrec mock HIP device");
    return hipSuccess;
}
hipError_t hipDeviceTotalMem(size_t *bytes, int dev) {
    if (dev != 0) return hipErrorInvalidDevice;
    *bytes = (size_t)1 << 30;
    return hipSuccess;
}
/* ROCm 6's properties struct: only gcnArchName (offset 1160) is filled. */
hipError_t hipGetDevicePropertiesR0600(void *prop, int dev) {
    if (dev != 0) return hipErrorInvalidDevice;
    memset(prop, 0, 1472);
    strcpy((char *)prop, "linrec mock HIP device");
    strcpy((char *)prop + 1160, "gfx90a:sramecc+:xnack-");
    return hipSuccess;
}

hipError_t hipMalloc(void **p, size_t n) {
    NEED_DEVICE();
    if (n == 0) { *p = NULL; return hipSuccess; }
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    return *p ? hipSuccess : hipErrorInvalidValue;
}
hipError_t hipFree(void *p) { free(p); return hipSuccess; }
hipError_t hipMemcpyHtoD(void *dst, void *src, size_t n) { NEED_DEVICE(); memcpy(dst, src, n); return hipSuccess; }
hipError_t hipMemcpyDtoH(void *dst, void *src, size_t n) { NEED_DEVICE(); memcpy(dst, src, n); return hipSuccess; }
hipError_t hipMemsetD8(void *d, unsigned char v, size_t n) { NEED_DEVICE(); memset(d, v, n); return hipSuccess; }
hipError_t hipMemsetD16(void *d, unsigned short v, size_t n) {
    NEED_DEVICE();
    for (size_t i = 0; i < n; i++) ((unsigned short *)d)[i] = v;
    return hipSuccess;
}
hipError_t hipMemsetD32(void *d, int v, size_t n) {
    NEED_DEVICE();
    for (size_t i = 0; i < n; i++) ((int *)d)[i] = v;
    return hipSuccess;
}
hipError_t hipDeviceSynchronize(void) { NEED_DEVICE(); return hipSuccess; }

typedef struct { int live; } Module;
typedef struct { int index; } Function;
static Function functions[3] = {{0}, {1}, {2}};

hipError_t hipModuleLoadData(void **module, const void *image) {
    NEED_DEVICE();
    const unsigned char *b = image;
    if (memcmp(b, "\x7f" "ELF", 4) != 0 || b[18] != 224 || b[19] != 0) return hipErrorInvalidImage;
    if (memcmp(b + 64, MOCK_MARKER, sizeof MOCK_MARKER - 1) != 0) return hipErrorInvalidImage;
    Module *m = calloc(1, sizeof *m);
    m->live = 1;
    *module = m;
    return hipSuccess;
}
hipError_t hipModuleUnload(void *module) {
    Module *m = module;
    if (!m || !m->live) return hipErrorInvalidValue;
    m->live = 0;
    free(m);
    return hipSuccess;
}
hipError_t hipModuleGetFunction(void **f, void *module, const char *name) {
    NEED_DEVICE();
    if (!module || !((Module *)module)->live) return hipErrorInvalidValue;
    int i = mock_kernel_index(name);
    if (i < 0) return hipErrorNotFound;
    *f = &functions[i];
    return hipSuccess;
}
hipError_t hipModuleLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                 unsigned by, unsigned bz, unsigned shared, void *stream,
                                 void **params, void **extra) {
    NEED_DEVICE();
    (void)shared;
    if (stream != NULL || extra != NULL || params == NULL) return hipErrorInvalidValue;
    if (gy != 1 || gz != 1 || by != 1 || bz != 1) return hipErrorInvalidValue;
    int which = ((Function *)f)->index;
    for (int i = 0; i < MOCK_NUM_ARGS[which]; i++)
        if (params[i] == NULL || ((uintptr_t)params[i] % (uintptr_t)MOCK_ARG_SIZES[which][i]) != 0)
            return hipErrorInvalidValue;
    return mock_run_kernel(which, (const void *const *)params, gx, bx) == 0 ? hipSuccess
                                                                             : hipErrorLaunchFailure;
}
