/* The fixture kernels (tests/fixtures/kernels.mlir) run on the host, for the mock drivers.
 * `args[i]` points at the value of argument i, as HIP's kernelParams and the values given to
 * zeKernelSetArgumentValue do. Returns 0, or -1 for an unknown kernel. */
#include <stdint.h>
#include <string.h>

static const char *const MOCK_KERNELS[] = {"axpy", "block_sum", "iota_i32"};
/* Argument sizes per kernel (8 = a device pointer or an i64). */
static const int MOCK_ARG_SIZES[3][5] = {{4, 8, 8, 8, 4}, {8, 8, 8, 0, 0}, {8, 4, 4, 4, 0}};
static const int MOCK_NUM_ARGS[3] = {5, 3, 4};

static int mock_kernel_index(const char *name) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, MOCK_KERNELS[i]) == 0) return i;
    return -1;
}

static int mock_run_kernel(int which, const void *const *args, uint64_t groups, uint64_t block) {
    uint64_t threads = groups * block;
    switch (which) {
    case 0: { /* axpy(f32 alpha, f32* x, f32* y, f32* out, i32 n) */
        float alpha = *(const float *)args[0];
        const float *x = *(float *const *)args[1];
        const float *y = *(float *const *)args[2];
        float *out = *(float *const *)args[3];
        int32_t n = *(const int32_t *)args[4];
        for (uint64_t i = 0; i < threads; i++)
            if ((int64_t)i < n) out[i] = alpha * x[i] + y[i];
        return 0;
    }
    case 1: { /* block_sum(f32* x, f32* out, i64 n): one sum per work group */
        const float *x = *(float *const *)args[0];
        float *out = *(float *const *)args[1];
        int64_t n = *(const int64_t *)args[2];
        for (uint64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (uint64_t i = g * block; i < (g + 1) * block && (int64_t)i < n; i++) s += x[i];
            out[g] = s;
        }
        return 0;
    }
    case 2: { /* iota_i32(i32* out, i32 base, i32 step, i32 n) */
        int32_t *out = *(int32_t *const *)args[0];
        int32_t base = *(const int32_t *)args[1], step = *(const int32_t *)args[2];
        int32_t n = *(const int32_t *)args[3];
        for (uint64_t i = 0; i < threads; i++)
            if ((int64_t)i < n) out[i] = base + step * (int32_t)i;
        return 0;
    }
    }
    return -1;
}
