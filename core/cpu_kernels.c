/* Batch-1 matrix-vector product for CPU decoding: y = W x + b, W (n, k) row-major, all float32.
 *
 * A decode step multiplies one vector by every weight matrix, so it is bound by how fast the
 * matrices stream from memory. Each thread takes a contiguous band of rows and cuts it into
 * STREAMS equal parts, then walks the parts together, one row of each at a time: STREAMS
 * sequential streams per core, which the hardware prefetchers follow and which keep more
 * cache-line reads in flight than one stream can. On a 2-core EPYC (Zen 4) four streams carry
 * GPT-2's matrices at ~48 GB/s against ~41 for one; on a 16-core Xeon VM at 2 threads, 27.5
 * against 21 (level with MKL; oneDNN ~20). bench/NOTES.md, session 7, has the sweep.
 *
 * Every row is summed the same way wherever it falls (one vector accumulator, then a fixed
 * reduction), so the result does not depend on the thread count.
 *
 * Built by setup.py as gptui.core._cpu_kernels (optional: without a compiler the backend keeps
 * oneDNN). Threads come from OpenMP; the caller passes the count (torch.get_num_threads()), and
 * since PyTorch loads libgomp.so.1 first, both share one pool. The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define GPTUI_X86 1
#endif

#define STREAMS 4

/* rows_*(w, x, y, count, stride, k): y[s * stride] = W[s * stride] . x for s < count, the rows
 * walked together. count is STREAMS or 1; always inlined so the loops over s unroll. */
#define ROWS_FN(name) static inline __attribute__((always_inline)) void name( \
    const float *w, const float *x, float *y, const int count, long stride, long k)

ROWS_FN(rows_portable) {
    float acc[STREAMS][8] = {{0}};
    long i = 0;
    for (; i + 8 <= k; i += 8)
        for (int s = 0; s < count; s++)
            for (int j = 0; j < 8; j++)
                acc[s][j] += w[s * stride * k + i + j] * x[i + j];
    for (int s = 0; s < count; s++) {
        const float *a = acc[s];
        float total = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        for (long j = i; j < k; j++)
            total += w[s * stride * k + j] * x[j];
        y[s * stride] = total;
    }
}

#ifdef GPTUI_X86
__attribute__((target("avx512f"))) ROWS_FN(rows_avx512) {
    __m512 acc[STREAMS];
    for (int s = 0; s < count; s++)
        acc[s] = _mm512_setzero_ps();
    long i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512 xv = _mm512_loadu_ps(x + i);
        for (int s = 0; s < count; s++)
            acc[s] = _mm512_fmadd_ps(_mm512_loadu_ps(w + s * stride * k + i), xv, acc[s]);
    }
    if (i < k) {
        __mmask16 tail = (__mmask16)((1u << (k - i)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(tail, x + i);
        for (int s = 0; s < count; s++)
            acc[s] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w + s * stride * k + i), xv, acc[s]);
    }
    for (int s = 0; s < count; s++)
        y[s * stride] = _mm512_reduce_add_ps(acc[s]);
}

__attribute__((target("avx2,fma"))) ROWS_FN(rows_avx2) {
    __m256 acc[STREAMS];
    for (int s = 0; s < count; s++)
        acc[s] = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
        for (int s = 0; s < count; s++)
            acc[s] = _mm256_fmadd_ps(_mm256_loadu_ps(w + s * stride * k + i), xv, acc[s]);
    }
    for (int s = 0; s < count; s++) {
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[s]), _mm256_extractf128_ps(acc[s], 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        float total = _mm_cvtss_f32(h);
        for (long j = i; j < k; j++)
            total += w[s * stride * k + j] * x[j];
        y[s * stride] = total;
    }
}
#endif

/* band_*(w, x, y, n, k): rows 0..n of a thread's band, STREAMS parts walked together, then the
 * few rows left over one at a time. */
typedef void (*band_fn)(const float *w, const float *x, float *y, long n, long k);

#define BAND_FN(target, name, rows)                                             \
    target static void name(const float *w, const float *x, float *y, long n, long k) { \
        long part = n / STREAMS, r;                                             \
        for (r = 0; r < part; r++)                                              \
            rows(w + r * k, x, y + r, STREAMS, part, k);                        \
        for (r = STREAMS * part; r < n; r++)                                    \
            rows(w + r * k, x, y + r, 1, 0, k);                                 \
    }

BAND_FN(, band_portable, rows_portable)
#ifdef GPTUI_X86
BAND_FN(__attribute__((target("avx512f"))), band_avx512, rows_avx512)
BAND_FN(__attribute__((target("avx2,fma"))), band_avx2, rows_avx2)
#endif

/* The kernel for `want` ("avx512", "avx2", "portable"), or the best this CPU runs when want is NULL
 * or names one it lacks. */
static band_fn pick_band(const char *want, const char **name) {
#ifdef GPTUI_X86
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int any = want == NULL;
    if (avx512 && (any || strcmp(want, "avx512") == 0)) {
        *name = "avx512";
        return band_avx512;
    }
    if (avx2 && (any || strcmp(want, "avx2") == 0)) {
        *name = "avx2";
        return band_avx2;
    }
    if (!any && strcmp(want, "portable") != 0)
        return pick_band(NULL, name);
#endif
    (void)want;
    *name = "portable";
    return band_portable;
}

static band_fn band = NULL;
static const char *isa = "";

static void gemv_rows(const float *w, const float *x, const float *b, float *y, long n, long k, int threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        long t = 0, count = 1, lo, hi, r;
#ifdef _OPENMP
        t = omp_get_thread_num();
        count = omp_get_num_threads();
#endif
        lo = n * t / count;
        hi = n * (t + 1) / count;
        band(w + lo * k, x, y + lo, hi - lo, k);
        if (b)
            for (r = lo; r < hi; r++)
                y[r] += b[r];
    }
    (void)threads;
}

static PyObject *gemv(PyObject *self, PyObject *args) {
    unsigned long long w, x, b, y;
    long n, k;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKlli:gemv", &w, &x, &b, &y, &n, &k, &threads))
        return NULL;
    if (!w || !x || !y || n < 0 || k < 0) {
        PyErr_SetString(PyExc_ValueError, "gemv: null pointer or negative size");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    gemv_rows((const float *)(uintptr_t)w, (const float *)(uintptr_t)x, (const float *)(uintptr_t)b,
              (float *)(uintptr_t)y, n, k, threads < 1 ? 1 : threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *select_isa(PyObject *self, PyObject *args) {
    const char *want;
    if (!PyArg_ParseTuple(args, "s:select", &want))
        return NULL;
    band = pick_band(want, &isa);
    return PyUnicode_FromString(isa);
}

static PyObject *current_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(isa); }

static PyMethodDef methods[] = {
    {"gemv", gemv, METH_VARARGS,
     "gemv(w, x, b, y, n, k, threads): y = W x + b from raw float32 addresses (b may be 0). Unchecked: "
     "use gptui.core.cpu_kernels."},
    {"select", select_isa, METH_VARARGS,
     "select(name): use the avx512, avx2 or portable kernel (the best one if this CPU lacks it); returns the one used."},
    {"isa", current_isa, METH_NOARGS, "isa(): the kernel in use."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cpu_kernels(void) {
    band = pick_band(NULL, &isa);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
#ifdef _OPENMP
    PyModule_AddIntConstant(m, "openmp", 1);
#else
    PyModule_AddIntConstant(m, "openmp", 0);
#endif
    return m;
}
