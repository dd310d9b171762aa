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
 * The same file holds the rest of a decode step: one token's attention over the cache, and a whole
 * GPT-2 block (norms, products, attention, GELU, residual adds) in one call, which spares the
 * two dozen module calls and PyTorch ops a block costs from Python (GPT-2's step 1.13x faster on
 * both CPUs measured, the `small` preset's 1.08-1.17x; bench/cpu_gemv.py, bench/NOTES.md).
 *
 * Built by setup.py as gptui.core.kernels._cpu_kernels (optional: without a compiler the backend keeps
 * oneDNN). Threads come from OpenMP; the caller passes the count (torch.get_num_threads()), and
 * since PyTorch loads libgomp.so.1 first, both share one pool. The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define GPTUI_X86 1
#endif

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define INLINE static __forceinline
#define restrict __restrict
#else
#define INLINE static inline
#endif

#define STREAMS 4

/* rows_*(w, x, y, count, stride, k): y[s * stride] = W[s * stride] . x for s < count, the rows
 * walked together. count is STREAMS or 1; always inlined so the loops over s unroll. */
#define ROWS_FN(name) INLINE void name( \
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

/* One head's attention for one query over the cached positions 0..n-1: scores K q through the
 * band kernel, softmax, then V summed as STREAMS parts of the positions walked together (each
 * part with its own accumulator row in acc, STREAMS x hs), as the band walks the weights. Plain C
 * loops: the ISA wrappers below compile them for their target. p holds n floats. */
INLINE void attend_head(
    band_fn scores, const float *restrict q, const float *restrict k, const float *restrict v, float *restrict y,
    float *restrict p, float *restrict acc, long n, long hs) {
    float scale = 1.0f / sqrtf((float)hs), top = -INFINITY, total = 0.0f;
    long part = n / STREAMS, t, i, d;
    int s;
    scores(k, q, p, n, hs);
    for (t = 0; t < n; t++)
        top = p[t] > top ? p[t] : top;
    for (t = 0; t < n; t++) {
        p[t] = expf((p[t] - top) * scale);
        total += p[t];
    }
    for (d = 0; d < STREAMS * hs; d++)
        acc[d] = 0.0f;
    for (i = 0; i < part; i++)
        for (s = 0; s < STREAMS; s++) {
            const float *row = v + (s * part + i) * hs;
            float weight = p[s * part + i], *a = acc + s * hs;
            for (d = 0; d < hs; d++)
                a[d] += weight * row[d];
        }
    for (t = STREAMS * part; t < n; t++)
        for (d = 0; d < hs; d++)
            acc[d] += p[t] * v[t * hs + d];
    for (d = 0; d < hs; d++) {
        float sum = 0.0f;
        for (s = 0; s < STREAMS; s++)
            sum += acc[s * hs + d];
        y[d] = sum / total;
    }
}

typedef void (*head_fn)(const float *q, const float *k, const float *v, float *y, float *p, float *acc, long n, long hs);

#define HEAD_FN(target, name, band_name)                                                                    \
    target static void name(const float *q, const float *k, const float *v, float *y, float *p, float *acc, \
                            long n, long hs) {                                                              \
        attend_head(band_name, q, k, v, y, p, acc, n, hs);                                                  \
    }

HEAD_FN(, head_portable, band_portable)
#ifdef GPTUI_X86
HEAD_FN(__attribute__((target("avx512f"))), head_avx512, band_avx512)
HEAD_FN(__attribute__((target("avx2,fma"))), head_avx2, band_avx2)
#endif

struct kernels {
    const char *name;
    band_fn band;
    head_fn head;
};

static const struct kernels portable = {"portable", band_portable, head_portable};
#ifdef GPTUI_X86
static const struct kernels avx512 = {"avx512", band_avx512, head_avx512};
static const struct kernels avx2 = {"avx2", band_avx2, head_avx2};
#endif

/* The kernels for `want` ("avx512", "avx2", "portable"), or the best this CPU runs when want is NULL
 * or names one it lacks. */
static const struct kernels *pick(const char *want) {
#ifdef GPTUI_X86
    __builtin_cpu_init();
    int has_avx512 = __builtin_cpu_supports("avx512f");
    int has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int any = want == NULL;
    if (has_avx512 && (any || strcmp(want, "avx512") == 0))
        return &avx512;
    if (has_avx2 && (any || strcmp(want, "avx2") == 0))
        return &avx2;
    if (!any && strcmp(want, "portable") != 0)
        return pick(NULL);
#endif
    (void)want;
    return &portable;
}

static const struct kernels *use = NULL;

/* GPT-2's tanh GELU, 0.5 v (1 + tanh(u)), written as v / (1 + exp(-2u)): the same function, one expf. */
INLINE float gelu(float v) {
    float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    return v / (1.0f + expf(-2.0f * u));
}

/* y = W x + b, then per row (on the thread that summed it): GELU if gelu, plus res[r] if res,
 * stored to out[r] (out may be res; NULL means y). */
static void gemv_rows(const float *w, const float *x, const float *b, float *y, long n, long k, int threads,
                      int act_gelu, const float *res, float *out) {
    if (out == NULL)
        out = y;
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
        use->band(w + lo * k, x, y + lo, hi - lo, k);
        if (b || act_gelu || res)
            for (r = lo; r < hi; r++) {
                float v = b ? y[r] + b[r] : y[r];
                if (act_gelu)
                    v = gelu(v);
                out[r] = res ? res[r] + v : v;
            }
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
              (float *)(uintptr_t)y, n, k, threads < 1 ? 1 : threads, 0, NULL, NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Attention of one new token at position pos (batch 1): qkv holds q, k, v (3 x nh x hs) as c_attn
 * wrote them; k and v go into the cache kv (2, nh, max_len, hs) at pos, then every head attends
 * over positions 0..pos. Heads are shared out over the threads. Returns 0, or -1 out of memory. */
static int attend_rows(const float *qkv, float *kv, float *y, long nh, long hs, long max_len, long pos, int threads) {
    long c = nh * hs, n = pos + 1;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && nh > 1)
#endif
    {
        float *scratch = malloc((size_t)(n + STREAMS * hs) * sizeof(float));
        long h;
        if (scratch == NULL)
            failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (h = 0; h < nh; h++) {
            float *k = kv + h * max_len * hs, *v = kv + (nh + h) * max_len * hs;
            memcpy(k + pos * hs, qkv + c + h * hs, (size_t)hs * sizeof(float));
            memcpy(v + pos * hs, qkv + 2 * c + h * hs, (size_t)hs * sizeof(float));
            if (scratch != NULL)
                use->head(qkv + h * hs, k, v, y + h * hs, scratch, scratch + n, n, hs);
        }
        free(scratch);
    }
    (void)threads;
    return failed ? -1 : 0;
}

static PyObject *attend(PyObject *self, PyObject *args) {
    unsigned long long qkv, kv, y;
    long nh, hs, max_len, pos;
    int threads, status;
    if (!PyArg_ParseTuple(args, "KKKlllli:attend", &qkv, &kv, &y, &nh, &hs, &max_len, &pos, &threads))
        return NULL;
    if (!qkv || !kv || !y || nh < 1 || hs < 1 || pos < 0 || pos >= max_len) {
        PyErr_SetString(PyExc_ValueError, "attend: null pointer, empty head or position outside the cache");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    status = attend_rows((const float *)(uintptr_t)qkv, (float *)(uintptr_t)kv, (float *)(uintptr_t)y, nh, hs,
                         max_len, pos, threads < 1 ? 1 : threads);
    Py_END_ALLOW_THREADS
    if (status != 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Layer norm of one row of c values (biased variance, as torch), sums in double. w or b may be NULL. */
static void layer_norm(const float *x, const float *w, const float *b, float *y, long c, double eps) {
    double sum = 0.0, sq = 0.0, mean, inv;
    long i;
    for (i = 0; i < c; i++)
        sum += x[i];
    mean = sum / c;
    for (i = 0; i < c; i++)
        sq += (x[i] - mean) * (x[i] - mean);
    inv = 1.0 / sqrt(sq / c + eps);
    for (i = 0; i < c; i++) {
        float v = (float)((x[i] - mean) * inv);
        y[i] = (w ? v * w[i] : v) + (b ? b[i] : 0.0f);
    }
}

/* The weights of one GPT-2 block in this order, matrices (out, in) row-major float32; any bias or
 * norm weight may be NULL. */
enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, OUT_W, OUT_B, N_WEIGHTS };

/* One token through one block, x (c) updated in place: x += proj(attend(c_attn(ln_1(x)))), then
 * x += mlp_proj(gelu(c_fc(ln_2(x)))). scratch holds 9c floats. Returns 0, or -1 out of memory. */
static int block_rows(const float *const *p, float *x, float *kv, float *scratch, long c, long nh,
                      long max_len, long pos, double eps, int threads) {
    float *h = scratch, *qkv = h + c, *att = qkv + 3 * c, *ff = att + c;
    layer_norm(x, p[LN1_W], p[LN1_B], h, c, eps);
    gemv_rows(p[ATTN_W], h, p[ATTN_B], qkv, 3 * c, c, threads, 0, NULL, NULL);
    if (attend_rows(qkv, kv, att, nh, c / nh, max_len, pos, threads) != 0)
        return -1;
    gemv_rows(p[PROJ_W], att, p[PROJ_B], h, c, c, threads, 0, x, x);
    layer_norm(x, p[LN2_W], p[LN2_B], h, c, eps);
    gemv_rows(p[FC_W], h, p[FC_B], ff, 4 * c, c, threads, 1, NULL, NULL);
    gemv_rows(p[OUT_W], ff, p[OUT_B], qkv, c, 4 * c, threads, 0, x, x);
    return 0;
}

static PyObject *block(PyObject *self, PyObject *args) {
    unsigned long long a[N_WEIGHTS], x, kv, scratch;
    long c, nh, max_len, pos;
    double eps;
    int threads, status, i;
    const float *p[N_WEIGHTS];
    if (!PyArg_ParseTuple(args, "(KKKKKKKKKKKK)KKKllldli:block", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6],
                          &a[7], &a[8], &a[9], &a[10], &a[11], &x, &kv, &scratch, &c, &nh, &max_len, &eps, &pos,
                          &threads))
        return NULL;
    if (!x || !kv || !scratch || !a[ATTN_W] || !a[PROJ_W] || !a[FC_W] || !a[OUT_W] || nh < 1 || c < nh || c % nh || pos < 0 ||
        pos >= max_len || !(eps >= 0)) {
        PyErr_SetString(PyExc_ValueError, "block: null pointer, bad head split or position outside the cache");
        return NULL;
    }
    for (i = 0; i < N_WEIGHTS; i++)
        p[i] = (const float *)(uintptr_t)a[i];
    Py_BEGIN_ALLOW_THREADS
    status = block_rows(p, (float *)(uintptr_t)x, (float *)(uintptr_t)kv, (float *)(uintptr_t)scratch, c, nh,
                        max_len, pos, eps, threads < 1 ? 1 : threads);
    Py_END_ALLOW_THREADS
    if (status != 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *select_isa(PyObject *self, PyObject *args) {
    const char *want;
    if (!PyArg_ParseTuple(args, "s:select", &want))
        return NULL;
    use = pick(want);
    return PyUnicode_FromString(use->name);
}

static PyObject *current_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(use->name); }

static PyMethodDef methods[] = {
    {"gemv", gemv, METH_VARARGS,
     "gemv(w, x, b, y, n, k, threads): y = W x + b from raw float32 addresses (b may be 0). Unchecked: "
     "use gptui.core.kernels.cpu_kernels."},
    {"attend", attend, METH_VARARGS,
     "attend(qkv, kv, y, n_head, head_dim, max_len, pos, threads): one token's attention from raw float32 "
     "addresses, its k and v written into the cache at pos. Unchecked: use gptui.core.kernels.cpu_kernels."},
    {"block", block, METH_VARARGS,
     "block((ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, out_w, out_b), x, kv, scratch, "
     "c, n_head, max_len, eps, pos, threads): one token through one GPT-2 block, x updated in place, from raw "
     "float32 addresses. Unchecked: use gptui.core.kernels.cpu_kernels."},
    {"select", select_isa, METH_VARARGS,
     "select(name): use the avx512, avx2 or portable kernel (the best one if this CPU lacks it); returns the one used."},
    {"isa", current_isa, METH_NOARGS, "isa(): the kernel in use."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cpu_kernels(void) {
    use = pick(NULL);
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
