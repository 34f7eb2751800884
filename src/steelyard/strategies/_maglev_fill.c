/* The Maglev lookup table, filled in C: the same table as `maglev.build_table_reference`, slot for slot.
 *
 * Why C: at 10,000 endpoints the table has 1,000,003 slots and the paper's loop probes about M ln M
 * (~14 million) candidate slots; pure Python needs seconds and NumPy ~0.5 s, the target is 100 ms.
 * Optional: setup.py builds it when a compiler is present; `maglev.build_table` falls back to NumPy or
 * the pure-Python loop when it is missing (tests/test_maglev_fill.py checks all three agree).
 *
 * fill(offsets, skips, shares, m) -> list of length m, slot -> endpoint index
 *   offsets[i], skips[i]: endpoint i's preference order, slot_j = (offset + j * skip) mod m;
 *   shares[i]: weight / max weight (None: all equal); m: the table size, prime.
 *
 * The loop is the paper's (NSDI 2016, section 3.4) with Envoy-style weighted turns, in the reference's
 * exact float arithmetic (each round: earned += share; a turn when earned >= 1.0, then earned -= 1.0):
 * each turn claims the endpoint's next slot in its order that no earlier turn took. Two ways to find it:
 * - the walk: step through the order while slots are taken (a bitmap, 1 bit per slot: fits in cache);
 * - the endgame, once few slots are left (the walk would cost m / free probes per claim): every slot
 *   before the endpoint's position is taken, so its next claim is the free slot with the smallest rank
 *   (slot - position) x skip^-1 mod m among the free ones. Same answer, O(free) per claim.
 * The resulting list holds one int object per endpoint (shared), as the reference's does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t
mulmod(uint64_t a, uint64_t b, uint64_t m)
{
    return (uint64_t)(((unsigned __int128)a * b) % m);
}

static uint64_t
inverse(uint64_t a, uint64_t m)  /* a^(m-2) mod m: the inverse, m prime */
{
    uint64_t result = 1, base = a % m, e = m - 2;
    while (e) {
        if (e & 1)
            result = mulmod(result, base, m);
        base = mulmod(base, base, m);
        e >>= 1;
    }
    return result;
}

static int
read_u64s(PyObject *seq, Py_ssize_t n, uint64_t m, uint64_t *out, const char *what)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long v = PyLong_AsUnsignedLongLong(item);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        if (v >= m) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] is not below the table size", what, i);
            return -1;
        }
        out[i] = v;
    }
    return 0;
}

typedef struct {
    uint64_t m;
    uint64_t *bits;       /* taken slots */
    int32_t *table;       /* slot -> endpoint */
    uint64_t left;        /* free slots */
    uint64_t endgame_at;  /* switch to the endgame when this few are left */
    uint64_t *free_list;  /* the endgame's free slots, unordered */
    uint64_t *where;      /* slot -> its index in free_list */
    uint64_t free_count;
    int endgame;
} Fill;

static int
is_taken(const Fill *f, uint64_t c)
{
    return (int)((f->bits[c >> 6] >> (c & 63)) & 1);
}

static int
start_endgame(Fill *f)
{
    f->free_list = malloc(sizeof(uint64_t) * (f->left ? f->left : 1));
    f->where = malloc(sizeof(uint64_t) * f->m);
    if (!f->free_list || !f->where)
        return -1;
    f->free_count = 0;
    for (uint64_t c = 0; c < f->m; c++) {
        if (!is_taken(f, c)) {
            f->where[c] = f->free_count;
            f->free_list[f->free_count++] = c;
        }
    }
    f->endgame = 1;
    return 0;
}

static void
take(Fill *f, uint64_t c, int32_t endpoint)
{
    f->bits[c >> 6] |= (uint64_t)1 << (c & 63);
    f->table[c] = endpoint;
    f->left--;
    if (f->endgame) {  /* swap the last free slot into c's place */
        uint64_t last = f->free_list[--f->free_count];
        uint64_t at = f->where[c];
        f->free_list[at] = last;
        f->where[last] = at;
    }
}

/* One turn of endpoint i: claim its next free slot, move its position past it. */
static int
claim(Fill *f, int32_t i, uint64_t *position, const uint64_t *skips, uint64_t *inverses)
{
    uint64_t m = f->m, c = position[i], k = skips[i];
    if (!f->endgame && f->left <= f->endgame_at && start_endgame(f) < 0)
        return -1;
    if (!f->endgame) {
        while (is_taken(f, c)) {
            c += k;
            if (c >= m)
                c -= m;
        }
    } else {
        if (!inverses[i])
            inverses[i] = inverse(k, m);
        uint64_t inv = inverses[i], best_rank = UINT64_MAX, best = 0;
        for (uint64_t j = 0; j < f->free_count; j++) {
            uint64_t s = f->free_list[j];
            uint64_t rank = mulmod(s >= c ? s - c : s + m - c, inv, m);
            if (rank < best_rank) {
                best_rank = rank;
                best = s;
            }
        }
        c = best;
    }
    take(f, c, i);
    c += k;
    position[i] = c >= m ? c - m : c;
    return 0;
}

static const double *sort_shares;  /* qsort has no context argument: set and used with the GIL held */

static int
by_share(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_shares[i] != sort_shares[j])
        return sort_shares[i] < sort_shares[j] ? -1 : 1;
    return i < j ? -1 : 1;
}

/* The weighted turns, round by round, as the reference runs them (each endpoint: earned += share; a turn
 * when earned >= 1.0, then earned -= 1.0; turns in index order). Endpoints with the same share have the
 * same earned value in every round, so the arithmetic runs once per distinct share, and a round visits
 * only the endpoints of the shares that earned a turn: with one heavy endpoint among many light ones
 * most rounds have a turn or two, which the reference finds by visiting every endpoint. */
static int
weighted_turns(Fill *f, Py_ssize_t n, const double *shares, uint64_t *position, const uint64_t *skips,
               uint64_t *inverses)
{
    int32_t *order = malloc(sizeof(int32_t) * (size_t)n);      /* endpoints by (share, index) */
    int32_t *group_of = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *start = malloc(sizeof(int32_t) * (size_t)(n + 1)); /* group g: order[start[g]:start[g+1]] */
    double *earned = calloc((size_t)n, sizeof(double));
    int32_t *fired = malloc(sizeof(int32_t) * (size_t)n), *cursor = malloc(sizeof(int32_t) * (size_t)n);
    char *fires = calloc((size_t)n, 1);
    int failed = -1;
    if (!order || !group_of || !start || !earned || !fired || !cursor || !fires)
        goto done;
    for (int32_t i = 0; i < (int32_t)n; i++)
        order[i] = i;
    sort_shares = shares;  /* (called with the GIL held: no other fill() sorts meanwhile) */
    qsort(order, (size_t)n, sizeof(int32_t), by_share);
    int32_t groups = 0;
    for (int32_t k = 0; k < (int32_t)n; k++) {
        if (k == 0 || shares[order[k]] != shares[order[k - 1]])
            start[groups++] = k;
        group_of[order[k]] = groups - 1;
    }
    start[groups] = (int32_t)n;
    failed = 0;
    Py_BEGIN_ALLOW_THREADS
    while (f->left > 0 && !failed) {
        int32_t count = 0;
        Py_ssize_t members = 0;
        for (int32_t g = 0; g < groups; g++) {
            earned[g] += shares[order[start[g]]];
            fires[g] = earned[g] >= 1.0;
            if (fires[g]) {
                earned[g] -= 1.0;
                fired[count++] = g;
                members += start[g + 1] - start[g];
            }
        }
        if (members * 8 >= n) {  /* most endpoints have a turn: walk them all in index order */
            for (int32_t i = 0; i < (int32_t)n && f->left > 0 && !failed; i++)
                if (fires[group_of[i]])
                    failed = claim(f, i, position, skips, inverses) < 0;
            continue;
        }
        for (int32_t c = 0; c < count; c++)  /* else merge the firing shares' endpoints by index */
            cursor[c] = start[fired[c]];
        while (f->left > 0 && !failed) {
            int32_t best = -1;
            for (int32_t c = 0; c < count; c++)
                if (cursor[c] < start[fired[c] + 1] && (best < 0 || order[cursor[c]] < order[cursor[best]]))
                    best = c;
            if (best < 0)
                break;
            failed = claim(f, order[cursor[best]++], position, skips, inverses) < 0;
        }
    }
    Py_END_ALLOW_THREADS
done:
    free(order);
    free(group_of);
    free(start);
    free(earned);
    free(fired);
    free(cursor);
    free(fires);
    return failed;
}

static PyObject *
fill(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *offsets_arg, *skips_arg, *shares_arg;
    unsigned long long m_arg;
    if (!PyArg_ParseTuple(args, "OOOK", &offsets_arg, &skips_arg, &shares_arg, &m_arg))
        return NULL;
    if (m_arg < 2 || m_arg > ((uint64_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "table size out of range");
        return NULL;
    }
    PyObject *offsets_seq = NULL, *skips_seq = NULL, *shares_seq = NULL, *result = NULL;
    PyObject **index_objects = NULL;
    uint64_t *position = NULL, *skips = NULL, *inverses = NULL;
    double *shares = NULL;
    Fill f;
    memset(&f, 0, sizeof f);
    f.m = m_arg;

    offsets_seq = PySequence_Fast(offsets_arg, "offsets must be a sequence");
    skips_seq = PySequence_Fast(skips_arg, "skips must be a sequence");
    if (!offsets_seq || !skips_seq)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(offsets_seq);
    if (n < 1 || n > INT32_MAX || PySequence_Fast_GET_SIZE(skips_seq) != n) {
        PyErr_SetString(PyExc_ValueError, "need as many skips as offsets, at least one");
        goto done;
    }
    position = calloc((size_t)n, sizeof(uint64_t));
    skips = calloc((size_t)n, sizeof(uint64_t));
    inverses = calloc((size_t)n, sizeof(uint64_t));
    f.bits = calloc((size_t)(f.m / 64 + 1), sizeof(uint64_t));
    f.table = malloc(sizeof(int32_t) * f.m);
    index_objects = calloc((size_t)n, sizeof(PyObject *));
    if (!position || !skips || !inverses || !f.bits || !f.table || !index_objects) {
        PyErr_NoMemory();
        goto done;
    }
    if (read_u64s(offsets_seq, n, f.m, position, "offsets") < 0 || read_u64s(skips_seq, n, f.m, skips, "skips") < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (skips[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "a skip of 0 visits one slot only");
            goto done;
        }
    }
    if (shares_arg != Py_None) {
        shares_seq = PySequence_Fast(shares_arg, "shares must be a sequence or None");
        if (!shares_seq)
            goto done;
        if (PySequence_Fast_GET_SIZE(shares_seq) != n) {
            PyErr_SetString(PyExc_ValueError, "need one share per endpoint");
            goto done;
        }
        shares = malloc(sizeof(double) * (size_t)n);
        if (!shares) {
            PyErr_NoMemory();
            goto done;
        }
        int some_whole = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            shares[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(shares_seq, i));
            if (shares[i] == -1.0 && PyErr_Occurred())
                goto done;
            if (!(shares[i] > 0.0 && shares[i] <= 1.0)) {
                PyErr_SetString(PyExc_ValueError, "shares must lie in (0, 1]");
                goto done;
            }
            some_whole |= shares[i] == 1.0;
        }
        if (!some_whole) {  /* otherwise a round might pass without a turn, and the loop never ends */
            PyErr_SetString(PyExc_ValueError, "the largest share must be 1.0");
            goto done;
        }
    }
    f.left = f.m;
    /* Walking costs m / free probes per claim, the endgame `free` rank computations: they meet near
     * free = sqrt(m) (measured at 10,000 endpoints: anything from sqrt(m) / 8 to sqrt(m) takes the same). */
    uint64_t root = 1;
    while ((root + 1) * (root + 1) <= f.m)
        root++;
    f.endgame_at = root / 4 + 1;

    int failed = 0;
    if (shares) {
        failed = weighted_turns(&f, n, shares, position, skips, inverses);  /* releases the GIL itself */
    } else {
        Py_BEGIN_ALLOW_THREADS
        while (f.left > 0 && !failed) {
            for (int32_t i = 0; i < (int32_t)n && f.left > 0; i++) {
                if (claim(&f, i, position, skips, inverses) < 0) {
                    failed = 1;
                    break;
                }
            }
        }
        Py_END_ALLOW_THREADS
    }
    if (f.left > 0) {
        PyErr_NoMemory();
        goto done;
    }

    result = PyList_New((Py_ssize_t)f.m);
    if (!result)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        index_objects[i] = PyLong_FromSsize_t(i);
        if (!index_objects[i]) {
            Py_CLEAR(result);
            goto done;
        }
    }
    for (uint64_t c = 0; c < f.m; c++) {
        PyObject *item = index_objects[f.table[c]];
        Py_INCREF(item);
        PyList_SET_ITEM(result, (Py_ssize_t)c, item);
    }

done:
    if (index_objects) {
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(offsets_seq); i++)
            Py_XDECREF(index_objects[i]);
        free(index_objects);
    }
    Py_XDECREF(offsets_seq);
    Py_XDECREF(skips_seq);
    Py_XDECREF(shares_seq);
    free(position);
    free(skips);
    free(inverses);
    free(shares);
    free(f.bits);
    free(f.table);
    free(f.free_list);
    free(f.where);
    return result;
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS,
     "fill(offsets, skips, shares, m) -> the Maglev table as a list (slot -> endpoint index)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_maglev_fill",
    "The Maglev table filled in C (the same table as maglev.build_table_reference).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__maglev_fill(void)
{
    return PyModule_Create(&module);
}
