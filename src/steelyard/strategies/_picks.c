/* The common case of two strategies' picks in C: PowerOfTwoChoices and PeakEWMA over a ticket table.
 *
 * Why C: their pick is ~40 bytecodes of subscripts and arithmetic, ~0.5 us at 10,000 endpoints, at the
 * edge of issue 2's budget (20x a bare Python call); here it is one call, ~2.5x cheaper in all.
 * Optional, like _maglev_fill: each strategy keeps its pure-Python pick, which runs when this module is
 * missing and whenever a function here answers -1 ("not decided here"); tests/test_picks_native.py
 * checks that both give the same picks and leave the same state for the same random numbers.
 *
 * Both functions take the strategy's own lists and the pick's random number u in [0, 1), draw the two
 * candidates from the ticket table exactly as the Python does (x = u * size: slot int(x), then slot
 * int((x - int(x)) * size)), and answer the chosen endpoint's index after counting it in flight, or -1,
 * leaving everything untouched, when: the draws hit the same endpoint (the Python redraws), PeakEWMA
 * would need the clock (one candidate measured, the other not), or a value is not of the expected type.
 * The arithmetic is the Python's, operation for operation, in IEEE doubles (ints below 2^53 convert
 * exactly, true division and libm's log as Python's float uses them), so the choice is the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define NOT_DECIDED PyLong_FromLong(-1)
#define COUNT_LIMIT ((long long)1 << 52)

/* The two ticket draws, or -1 when the table or its entries are not what the Python keeps. */
static int
draw_two(PyObject *slots, double u, Py_ssize_t limit, Py_ssize_t *first, Py_ssize_t *second)
{
    if (!PyList_CheckExact(slots))
        return -1;
    Py_ssize_t size = PyList_GET_SIZE(slots);
    double x = u * (double)size;
    if (!(x >= 0.0 && x < (double)size))
        return -1;
    Py_ssize_t i = (Py_ssize_t)x;
    Py_ssize_t j = (Py_ssize_t)((x - (double)i) * (double)size);
    if (j >= size)
        return -1;
    PyObject *a = PyList_GET_ITEM(slots, i), *b = PyList_GET_ITEM(slots, j);
    if (!PyLong_CheckExact(a) || !PyLong_CheckExact(b))
        return -1;
    *first = PyLong_AsSsize_t(a);
    *second = PyLong_AsSsize_t(b);
    if (*first < 0 || *second < 0 || *first >= limit || *second >= limit) {
        PyErr_Clear();
        return -1;
    }
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

/* two_choices(slots, counts, weights, u) -> index or -1: PowerOfTwoChoices.pick's ticket path. */
static PyObject *
two_choices(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "two_choices(slots, counts, weights, u)");
        return NULL;
    }
    PyObject *counts = args[1], *weights = args[2];
    if (!PyList_CheckExact(counts) || !PyList_CheckExact(weights) || !PyFloat_CheckExact(args[3]))
        return NOT_DECIDED;
    Py_ssize_t n = PyList_GET_SIZE(counts);
    if (PyList_GET_SIZE(weights) != n)
        return NOT_DECIDED;
    Py_ssize_t first, second;
    if (draw_two(args[0], PyFloat_AS_DOUBLE(args[3]), n, &first, &second) < 0 || first == second)
        return NOT_DECIDED;
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

/* peak_ewma(slots, state, u) -> index or -1: PeakEWMA.pick's ticket path.
 * A cell: [in flight (int), estimate (float), stamp, ln(estimate) + stamp / tau (float)]. */
static PyObject *
peak_ewma(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "peak_ewma(slots, state, u)");
        return NULL;
    }
    PyObject *state = args[1];
    if (!PyList_CheckExact(state) || !PyFloat_CheckExact(args[2]))
        return NOT_DECIDED;
    Py_ssize_t first, second;
    if (draw_two(args[0], PyFloat_AS_DOUBLE(args[2]), PyList_GET_SIZE(state), &first, &second) < 0
        || first == second)
        return NOT_DECIDED;
    PyObject *a = PyList_GET_ITEM(state, first), *b = PyList_GET_ITEM(state, second);
    if (!PyList_CheckExact(a) || !PyList_CheckExact(b) || PyList_GET_SIZE(a) < 4 || PyList_GET_SIZE(b) < 4)
        return NOT_DECIDED;
    long long pending_a, pending_b;
    PyObject *cost_a = PyList_GET_ITEM(a, 1), *cost_b = PyList_GET_ITEM(b, 1);
    if (small_count(PyList_GET_ITEM(a, 0), &pending_a) < 0 || small_count(PyList_GET_ITEM(b, 0), &pending_b) < 0
        || !PyFloat_CheckExact(cost_a) || !PyFloat_CheckExact(cost_b))
        return NOT_DECIDED;
    int measured_a = PyFloat_AS_DOUBLE(cost_a) != 0.0, measured_b = PyFloat_AS_DOUBLE(cost_b) != 0.0;
    int win;
    if (measured_a && measured_b) {
        PyObject *key_a = PyList_GET_ITEM(a, 3), *key_b = PyList_GET_ITEM(b, 3);
        if (!PyFloat_CheckExact(key_a) || !PyFloat_CheckExact(key_b))
            return NOT_DECIDED;
        double d = PyFloat_AS_DOUBLE(key_b) - PyFloat_AS_DOUBLE(key_a);
        win = pending_a == pending_b ? d < 0.0
                                     : d < log((double)(pending_a + 1) / (double)(pending_b + 1));
    } else if (measured_a || measured_b) {
        return NOT_DECIDED;  /* the Python decays the measured one to now */
    } else {
        win = pending_b < pending_a;
    }
    if (win) {
        if (count_one_more(b, 0, pending_b) < 0)
            return NULL;
        return PyLong_FromSsize_t(second);
    }
    if (count_one_more(a, 0, pending_a) < 0)
        return NULL;
    return PyLong_FromSsize_t(first);
}

static PyMethodDef methods[] = {
    {"two_choices", (PyCFunction)(void (*)(void))two_choices, METH_FASTCALL,
     "two_choices(slots, counts, weights, u) -> PowerOfTwoChoices' pick (an index) or -1"},
    {"peak_ewma", (PyCFunction)(void (*)(void))peak_ewma, METH_FASTCALL,
     "peak_ewma(slots, state, u) -> PeakEWMA's pick (an index) or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_picks",
    "PowerOfTwoChoices' and PeakEWMA's common pick in C (the Python picks are the reference).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__picks(void)
{
    return PyModule_Create(&module);
}
