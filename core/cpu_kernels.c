/* Batch-1 matrix-vector product for CPU decoding: y = W x + b, W (n, k) row-major, all float32.
 *
 * A decode step multiplies one vector by every weight matrix, so it is bound by how fast the
 * matrices stream from memory. Each thread takes a contiguous band of rows and walks it one row
 * at a time with four independent accumulators: a single sequential stream per core, which the
 * hardware prefetchers follow. On a 2-core EPYC (Zen 4) this streams GPT-2's matrices at ~50 GB/s
 * where oneDNN's packed GEMV reaches 21-36 and MKL's 14-28 (bench/NOTES.md, session 6).
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

typedef float (*dot_fn)(const float *w, const float *x, long k);

static float dot_portable(const float *w, const float *x, long k) {
    float acc[8] = {0};
    long i = 0;
    for (; i + 8 <= k; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += w[i + j] * x[i + j];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < k; i++)
        s += w[i] * x[i];
    return s;
}

#ifdef GPTUI_X86
__attribute__((target("avx512f"))) static float dot_avx512(const float *w, const float *x, long k) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    long i = 0;
    for (; i + 64 <= k; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= k; i += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < k) {
        __mmask16 tail = (__mmask16)((1u << (k - i)) - 1);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w + i), _mm512_maskz_loadu_ps(tail, x + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *w, const float *x, long k) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    long i = 0;
    for (; i + 32 <= k; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    float total = _mm_cvtss_f32(h);
    for (; i < k; i++)
        total += w[i] * x[i];
    return total;
}
#endif

/* The kernel for `want` ("avx512", "avx2", "portable"), or the best this CPU runs when want is NULL
 * or names one it lacks. */
static dot_fn pick_dot(const char *want, const char **name) {
#ifdef GPTUI_X86
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int any = want == NULL;
    if (avx512 && (any || strcmp(want, "avx512") == 0)) {
        *name = "avx512";
        return dot_avx512;
    }
    if (avx2 && (any || strcmp(want, "avx2") == 0)) {
        *name = "avx2";
        return dot_avx2;
    }
    if (!any && strcmp(want, "portable") != 0)
        return pick_dot(NULL, name);
#endif
    (void)want;
    *name = "portable";
    return dot_portable;
}

static dot_fn dot = NULL;
static const char *isa = "";

static void gemv_rows(const float *w, const float *x, const float *b, float *y, long n, long k, int threads) {
    long r;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (r = 0; r < n; r++)
        y[r] = dot(w + r * k, x, k) + (b ? b[r] : 0.0f);
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
    dot = pick_dot(want, &isa);
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
    dot = pick_dot(NULL, &isa);
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
