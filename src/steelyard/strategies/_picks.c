/* The common case of three strategies' picks in C: PowerOfTwoChoices and PeakEWMA over a ticket table,
 * and WeightedRoundRobin's EDF heap (`EdfHeap`, at the end).
 *
 * Why C: their pick is ~40 bytecodes of subscripts and arithmetic, ~0.5 us at 10,000 endpoints, at the
 * edge of issue 2's budget (20x a bare Python call); here it is one call, ~2.5x cheaper in all.
 * Optional, like _maglev_fill: each strategy keeps its pure-Python pick, which runs when this module is
 * missing and whenever a function here answers -1 ("not decided here"); tests/test_picks_native.py
 * checks that both give the same picks and leave the same state for the same random numbers.
 *
 * Both functions take the strategy's own lists and the pick's random number u in [0, 1), draw the two
 * candidates from the ticket table exactly as the Python does (`TwoDraws.ticket_pair`: x = u * size, the
 * first at ticket int(x), the second among the others' tickets by the fraction of x), and answer the
 * chosen endpoint's index after counting it in flight, or -1, leaving everything untouched, when PeakEWMA
 * would need the clock (one candidate measured, the other not) or a value is not of the expected type.
 * The arithmetic is the Python's, operation for operation, in IEEE doubles (ints below 2^53 convert
 * exactly, true division and libm's log as Python's float uses them), so the choice is the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define NOT_DECIDED PyLong_FromLong(-1)
#define COUNT_LIMIT ((long long)1 << 52)

/* The two ticket draws (TwoDraws.ticket_pair: the second among the other endpoints' tickets), or -1 when
 * the table or its entries are not what the Python keeps. */
static int
draw_two(PyObject *slots, PyObject *bounds, double u, Py_ssize_t limit, Py_ssize_t *first, Py_ssize_t *second)
{
    if (!PyList_CheckExact(slots) || !PyList_CheckExact(bounds))
        return -1;
    Py_ssize_t size = PyList_GET_SIZE(slots);
    if (PyList_GET_SIZE(bounds) != 2 * limit)
        return -1;
    double x = u * (double)size;
    if (!(x >= 0.0 && x < (double)size))
        return -1;
    Py_ssize_t t = (Py_ssize_t)x;
    PyObject *a = PyList_GET_ITEM(slots, t);
    if (!PyLong_CheckExact(a))
        return -1;
    Py_ssize_t i = PyLong_AsSsize_t(a);
    if (i < 0 || i >= limit) {
        PyErr_Clear();
        return -1;
    }
    PyObject *start_obj = PyList_GET_ITEM(bounds, 2 * i), *span_obj = PyList_GET_ITEM(bounds, 2 * i + 1);
    if (!PyLong_CheckExact(start_obj) || !PyLong_CheckExact(span_obj))
        return -1;
    Py_ssize_t start = PyLong_AsSsize_t(start_obj), span = PyLong_AsSsize_t(span_obj);
    if (start < 0 || span < 1 || span >= size) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t j = (Py_ssize_t)((x - (double)t) * (double)(size - span));
    if (j >= start)
        j += span;
    if (j < 0 || j >= size)
        return -1;
    PyObject *b = PyList_GET_ITEM(slots, j);
    if (!PyLong_CheckExact(b))
        return -1;
    Py_ssize_t k = PyLong_AsSsize_t(b);
    if (k < 0 || k >= limit) {
        PyErr_Clear();
        return -1;
    }
    *first = i;
    *second = k;
    return 0;
}

static int
small_count(PyObject *v, long long *out)
{
    if (!PyLong_CheckExact(v))
        return -1;
    int overflow = 0;
    long long c = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || c < 0 || c >= COUNT_LIMIT)
        return -1;
    *out = c;
    return 0;
}

/* Replace list[i] with the int value + 1 (the Python's `counts[best] += 1`). */
static int
count_one_more(PyObject *list, Py_ssize_t i, long long value)
{
    PyObject *bumped = PyLong_FromLongLong(value + 1);
    if (!bumped)
        return -1;
    return PyList_SetItem(list, i, bumped);  /* steals the reference, drops the old int */
}

/* The arguments both picks share: (slots, bounds, per-endpoint list, per-endpoint list, u). 0 and the two
 * candidates; -1: not decided here (answer -1); -2: the call itself is wrong (TypeError set). */
static int
candidates(PyObject *const *args, Py_ssize_t nargs, const char *usage, Py_ssize_t *first, Py_ssize_t *second)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -2;
    }
    PyObject *a = args[2], *b = args[3];
    if (!PyList_CheckExact(a) || !PyList_CheckExact(b) || !PyFloat_CheckExact(args[4]))
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(a);
    if (PyList_GET_SIZE(b) != n)
        return -1;
    if (draw_two(args[0], args[1], PyFloat_AS_DOUBLE(args[4]), n, first, second) < 0 || *first == *second)
        return -1;
    return 0;
}

/* two_choices(slots, bounds, counts, weights, u) -> index or -1: PowerOfTwoChoices.pick's ticket path. */
static PyObject *
two_choices(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t first, second;
    int ready = candidates(args, nargs, "two_choices(slots, bounds, counts, weights, u)", &first, &second);
    if (ready < 0)
        return ready == -2 ? NULL : NOT_DECIDED;
    PyObject *counts = args[2], *weights = args[3];
    PyObject *wa_obj = PyList_GET_ITEM(weights, first), *wb_obj = PyList_GET_ITEM(weights, second);
    long long ca, cb;
    if (!PyFloat_CheckExact(wa_obj) || !PyFloat_CheckExact(wb_obj)
        || small_count(PyList_GET_ITEM(counts, first), &ca) < 0
        || small_count(PyList_GET_ITEM(counts, second), &cb) < 0)
        return NOT_DECIDED;
    double wa = PyFloat_AS_DOUBLE(wa_obj), wb = PyFloat_AS_DOUBLE(wb_obj);
    /* (in flight + 1) / weight, cross-multiplied; a tie to the heavier, then to the first drawn */
    double sa = (double)(ca + 1) * wb, sb = (double)(cb + 1) * wa;
    int take_second = sb < sa || (sb == sa && wb > wa);
    Py_ssize_t best = take_second ? second : first;
    if (count_one_more(counts, best, take_second ? cb : ca) < 0)
        return NULL;
    return PyLong_FromSsize_t(best);
}

/* peak_ewma(slots, bounds, pending, keys, u) -> index or -1: PeakEWMA.pick's ticket path.
 * pending: picks in flight (ints); keys: ln(estimate) + stamp / tau (floats), None while unmeasured. */
static PyObject *
peak_ewma(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t first, second;
    int ready = candidates(args, nargs, "peak_ewma(slots, bounds, pending, keys, u)", &first, &second);
    if (ready < 0)
        return ready == -2 ? NULL : NOT_DECIDED;
    PyObject *pending = args[2], *keys = args[3];
    long long pending_a, pending_b;
    if (small_count(PyList_GET_ITEM(pending, first), &pending_a) < 0
        || small_count(PyList_GET_ITEM(pending, second), &pending_b) < 0)
        return NOT_DECIDED;
    PyObject *key_a = PyList_GET_ITEM(keys, first), *key_b = PyList_GET_ITEM(keys, second);
    int win;
    if (key_a != Py_None && key_b != Py_None) {
        if (!PyFloat_CheckExact(key_a) || !PyFloat_CheckExact(key_b))
            return NOT_DECIDED;
        double d = PyFloat_AS_DOUBLE(key_b) - PyFloat_AS_DOUBLE(key_a);
        win = pending_a == pending_b ? d < 0.0
                                     : d < log((double)(pending_a + 1) / (double)(pending_b + 1));
    } else if (key_a != Py_None || key_b != Py_None) {
        return NOT_DECIDED;  /* the Python decays the measured one to now */
    } else {
        win = pending_b < pending_a;
    }
    Py_ssize_t best = win ? second : first;
    if (count_one_more(pending, best, win ? pending_b : pending_a) < 0)
        return NULL;
    return PyLong_FromSsize_t(best);
}

/* EdfHeap(keys, strides, bits): WeightedRoundRobin's EDF heap over a C array.
 *
 * keys: the heap's entries, (deadline << bits) | index, as the Python keeps them in a list; strides:
 * per index, the deadline step already shifted left by bits. pop_push() takes the smallest key, moves
 * its deadline on by its stride and answers its index: `heapreplace(heap, key + strides[i])` and
 * `key & mask` in one call. Keys are unique (the index is in the low bits), so the sequence of answers is
 * the Python heap's whatever the arrangement. The array holds keys less `base` (a Python int, a
 * multiple of 2^bits): when a key would pass 2^63 every key drops by the smallest one's deadline part
 * and base grows by as much, so keys() still gives the Python's exact values and nothing overflows.
 * Why: at 10,000 endpoints heapq compares ~28 int objects scattered in memory per pick (~0.3 us); this
 * walks 14 levels of one array. The constructor raises ValueError for keys or strides it cannot hold
 * (the strategy then keeps the Python heap). */
typedef struct {
    PyObject_HEAD
    uint64_t *keys;
    uint64_t *strides;
    Py_ssize_t n;
    int bits;
    PyObject *base;
} EdfHeap;

#define KEY_LIMIT ((uint64_t)1 << 63)

static void
sift_down(uint64_t *keys, Py_ssize_t n, Py_ssize_t pos, uint64_t key)
{
    for (;;) {
        Py_ssize_t child = 2 * pos + 1;
        if (child >= n)
            break;
        if (child + 1 < n && keys[child + 1] < keys[child])
            child++;
        if (keys[child] >= key)
            break;
        keys[pos] = keys[child];
        pos = child;
    }
    keys[pos] = key;
}

static void
edf_dealloc(EdfHeap *self)
{
    PyMem_Free(self->keys);
    PyMem_Free(self->strides);
    Py_XDECREF(self->base);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
edf_init(EdfHeap *self, PyObject *args, PyObject *kwargs)
{
    PyObject *keys_arg, *strides_arg, *keys_seq = NULL, *strides_seq = NULL, *low = NULL;
    int bits, result = -1;
    static char *names[] = {"keys", "strides", "bits", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOi", names, &keys_arg, &strides_arg, &bits))
        return -1;
    if (bits < 1 || bits > 40) {
        PyErr_SetString(PyExc_ValueError, "bits out of range");
        return -1;
    }
    keys_seq = PySequence_Fast(keys_arg, "keys must be a sequence");
    strides_seq = keys_seq ? PySequence_Fast(strides_arg, "strides must be a sequence") : NULL;
    if (!strides_seq)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(keys_seq), count = PySequence_Fast_GET_SIZE(strides_seq);
    if (n < 1 || n != count || (uint64_t)n > ((uint64_t)1 << bits)) {
        PyErr_SetString(PyExc_ValueError, "need one key and one stride per endpoint, at most 2^bits");
        goto done;
    }
    PyMem_Free(self->keys);
    PyMem_Free(self->strides);
    self->keys = PyMem_Malloc(sizeof(uint64_t) * (size_t)n);
    self->strides = PyMem_Malloc(sizeof(uint64_t) * (size_t)n);
    if (!self->keys || !self->strides) {
        PyErr_NoMemory();
        goto done;
    }
    self->n = n;
    self->bits = bits;
    /* base: the smallest key with its index bits cleared */
    PyObject *smallest = PySequence_Fast_GET_ITEM(keys_seq, 0);
    for (Py_ssize_t j = 1; j < n; j++) {
        PyObject *k = PySequence_Fast_GET_ITEM(keys_seq, j);
        int less = PyObject_RichCompareBool(k, smallest, Py_LT);
        if (less < 0)
            goto done;
        if (less)
            smallest = k;
    }
    PyObject *mask = PyLong_FromUnsignedLongLong(((uint64_t)1 << bits) - 1);
    if (!mask)
        goto done;
    low = PyNumber_And(smallest, mask);
    Py_DECREF(mask);
    if (!low)
        goto done;
    Py_XSETREF(self->base, PyNumber_Subtract(smallest, low));
    if (!self->base)
        goto done;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *relative = PyNumber_Subtract(PySequence_Fast_GET_ITEM(keys_seq, j), self->base);
        if (!relative)
            goto done;
        unsigned long long v = PyLong_AsUnsignedLongLong(relative);
        Py_DECREF(relative);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            goto done;
        if (v >= KEY_LIMIT || (v & (((uint64_t)1 << bits) - 1)) >= (uint64_t)n) {
            PyErr_SetString(PyExc_ValueError, "keys too far apart or an index out of range");
            goto done;
        }
        self->keys[j] = v;
        unsigned long long stride = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(strides_seq, j));
        if (stride == (unsigned long long)-1 && PyErr_Occurred())
            goto done;
        if (stride == 0 || stride >= KEY_LIMIT || (stride & (((uint64_t)1 << bits) - 1))) {
            PyErr_SetString(PyExc_ValueError, "a stride must be a positive multiple of 2^bits below 2^63");
            goto done;
        }
        self->strides[j] = stride;
    }
    for (Py_ssize_t j = n / 2 - 1; j >= 0; j--)
        sift_down(self->keys, n, j, self->keys[j]);
    result = 0;
done:
    if (result < 0 && PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "a key or stride does not fit in 64 bits");
    }
    Py_XDECREF(low);
    Py_XDECREF(keys_seq);
    Py_XDECREF(strides_seq);
    if (result < 0)
        self->n = 0;
    return result;
}

static PyObject *
edf_pop_push(EdfHeap *self, PyObject *unused)
{
    (void)unused;
    if (self->n < 1) {
        PyErr_SetString(PyExc_IndexError, "empty heap");
        return NULL;
    }
    uint64_t key = self->keys[0], mask = ((uint64_t)1 << self->bits) - 1;
    Py_ssize_t i = (Py_ssize_t)(key & mask);
    uint64_t stride = self->strides[i];
    if (key >= KEY_LIMIT - stride) {  /* renormalize: drop every key by the smallest one's deadline */
        uint64_t drop = key & ~mask;
        PyObject *step = PyLong_FromUnsignedLongLong(drop), *base;
        if (!step)
            return NULL;
        base = PyNumber_Add(self->base, step);
        Py_DECREF(step);
        if (!base)
            return NULL;
        Py_SETREF(self->base, base);
        for (Py_ssize_t j = 0; j < self->n; j++)
            self->keys[j] -= drop;
        key -= drop;
    }
    sift_down(self->keys, self->n, 0, key + stride);
    return PyLong_FromSsize_t(i);
}

static PyObject *
edf_keys(EdfHeap *self, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New(self->n);
    for (Py_ssize_t j = 0; out && j < self->n; j++) {
        PyObject *relative = PyLong_FromUnsignedLongLong(self->keys[j]);
        PyObject *key = relative ? PyNumber_Add(self->base, relative) : NULL;
        Py_XDECREF(relative);
        if (!key) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, j, key);
    }
    return out;
}

static PyObject *
edf_reduce(EdfHeap *self, PyObject *unused)
{
    (void)unused;
    PyObject *keys = edf_keys(self, NULL), *strides = PyList_New(self->n);
    for (Py_ssize_t j = 0; strides && j < self->n; j++) {
        PyObject *stride = PyLong_FromUnsignedLongLong(self->strides[j]);
        if (!stride) {
            Py_CLEAR(strides);
            break;
        }
        PyList_SET_ITEM(strides, j, stride);
    }
    PyObject *out = keys && strides ? Py_BuildValue("O(OOi)", Py_TYPE(self), keys, strides, self->bits) : NULL;
    Py_XDECREF(keys);
    Py_XDECREF(strides);
    return out;
}

static Py_ssize_t
edf_len(EdfHeap *self)
{
    return self->n;
}

static PyMethodDef edf_methods[] = {
    {"pop_push", (PyCFunction)edf_pop_push, METH_NOARGS,
     "The next endpoint's index; its deadline moves on by its stride."},
    {"keys", (PyCFunction)edf_keys, METH_NOARGS, "The keys, as the Python heap would hold them (heap order)."},
    {"__reduce__", (PyCFunction)edf_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods edf_as_sequence = {.sq_length = (lenfunc)edf_len};

static PyTypeObject EdfHeapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "steelyard.strategies._picks.EdfHeap",
    .tp_basicsize = sizeof(EdfHeap),
    .tp_dealloc = (destructor)edf_dealloc,
    .tp_as_sequence = &edf_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "WeightedRoundRobin's EDF heap: EdfHeap(keys, strides, bits).",
    .tp_methods = edf_methods,
    .tp_init = (initproc)edf_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {"two_choices", (PyCFunction)(void (*)(void))two_choices, METH_FASTCALL,
     "two_choices(slots, bounds, counts, weights, u) -> PowerOfTwoChoices' pick (an index) or -1"},
    {"peak_ewma", (PyCFunction)(void (*)(void))peak_ewma, METH_FASTCALL,
     "peak_ewma(slots, bounds, pending, keys, u) -> PeakEWMA's pick (an index) or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_picks",
    "PowerOfTwoChoices', PeakEWMA's and EDF's common pick in C (the Python picks are the reference).", -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__picks(void)
{
    if (PyType_Ready(&EdfHeapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&EdfHeapType);
    if (PyModule_AddObject(m, "EdfHeap", (PyObject *)&EdfHeapType) < 0) {
        Py_DECREF(&EdfHeapType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
