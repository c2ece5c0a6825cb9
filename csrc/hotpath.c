/*
 * aiorcu._hotpath: the read side of aiorcu as CPython types.
 *
 * cffi cannot define Python types, and a read path written in Python costs
 * more than the lock it replaces, so the hot path lives here: read sections
 * (`domain.read()`, `with`, `async with`), the "inside a read section?" test,
 * `RcuCell.get()`, bitmap reads, guarded-memory accesses and the queueing of
 * `call_after_grace_period()`.  The grace-period engine stays in the cffi
 * core: this module compiles none of its .c files.  A domain hands it the
 * addresses of its control line and of the core's wake and release
 * functions (DomainBase._bind), so every static of the core (mechanism,
 * fault injection, jitter) exists once.  The reader protocol is the inline
 * steps of reader.h, shared with the C readers.
 *
 * Section identity.  `domain.read()` returns a fresh Section from a free
 * list.  A section is entered once, with `with` (kind THREAD) or `async
 * with` (kind TASK); it counts in the phase current at its entry, in the
 * entering thread's slot, under the slot generation of that moment; it is
 * closed exactly once (compare-and-swap on its state), by whatever thread or
 * context runs its exit.  On the entering thread the exit is the lock-free
 * path of reader.h; on any other thread it is the core's locked release
 * (aiorcu_section_release), and the caller gets RcuUsageError.  A section
 * collected while open (a dropped task or generator) is released by its
 * deallocator, on whatever thread that runs, and reported.
 *
 * Thread slots.  Each thread finds its slot in a domain through a small
 * thread-local cache keyed by the domain's serial (serials are never reused,
 * so a freed domain's entries never match), validated by the slot's owner
 * word: a slot released since (thread exit, fork) no longer names this
 * thread, and the lookup falls back to the domain's Python registry.
 *
 * Task sections and "inside".  An `async with` section is also pushed on a
 * context variable of its domain, linked to the context's previous open
 * record.  The caller is inside a read section of a domain when its thread
 * has an open `with` section there (its slot's THREAD counts), or when the
 * current context's chain holds an open task section entered on this
 * thread whose counts still stand (generation unchanged).
 *
 * The GIL.  Counts, states and generations are C11 atomics, and every
 * ordering is argued without the GIL (reader.h, grace.c).  What the GIL
 * does protect here is only Python-object bookkeeping that CPython itself
 * protects the same way: the section free list (compiled out on
 * free-threaded builds), and the reference counts of a published
 * RcuCell value (see CellBase_get).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <structmember.h>
#include <string.h>

#include "reader.h"

#define CACHE_WAYS 32 /* thread-local slot cache entries; a power of two */
#define FREE_MAX   64 /* sections kept for reuse */

typedef void (*wake_fn)(void *core);
typedef int (*release_fn)(void *core, void *line, int kind, int phase, uint64_t gen);
typedef uint64_t (*serial_fn)(void);

static serial_fn thread_serial_fn;
static _Atomic uint64_t next_domain_serial;

/* Bumped in every fork child (pthread_atfork): sections and cached slots
 * from before the last fork are told apart by it.  A private domain's
 * child keeps the forking thread's slot; a shared domain's child counts
 * its kept sections in a slot of its own (see DomainBase._adopted). */
static _Atomic uint64_t fork_epoch = 1;

static void fork_child_epoch(void)
{
    atomic_fetch_add_explicit(&fork_epoch, 1, memory_order_relaxed);
}

/* Python objects the C code raises or calls; set by configure(). */
static PyObject *RcuUsageError;
static PyObject *iscoroutinefunction;

static PyObject *str_thread_slot;     /* "_thread_slot" */
static PyObject *str_section_problem; /* "_section_problem" */

/* --- the calling thread ------------------------------------------------- */

struct cache_entry {
    uint64_t domain;                 /* domain serial, 0: empty */
    struct aiorcu_reader_line *line; /* NULL: the thread has no slot there */
    uint64_t token;                  /* the slot's owner word while it is ours */
    uint64_t epoch;                  /* fork_epoch when filled */
};

static _Thread_local struct {
    uint64_t serial; /* aiorcu_thread_serial() of this thread, 0 until needed */
    struct cache_entry e[CACHE_WAYS];
} tls;

static int ensure_serial(void)
{
    if (tls.serial)
        return 0;
    if (!thread_serial_fn) {
        PyErr_SetString(PyExc_RuntimeError, "aiorcu._hotpath.configure() was not called");
        return -1;
    }
    tls.serial = thread_serial_fn();
    if (!tls.serial) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* --- domains -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD uint64_t serial;
    _Atomic uint8_t *ctl; /* the domain's control line */
    void *core;           /* argument of wake/release */
    wake_fn wake;
    release_fn release;
    int fence; /* readers run F1/F2/F3 as full fences */
    int bound;
    int shared; /* the slots live in a segment other processes share */
    int closed; /* a shared domain this process detached from */
    /* shared, in a fork child: the forking thread's sections from before
     * the fork count in `remap_line` (the adopted bridge slot) */
    uint64_t remap_thread;
    uint64_t remap_epoch;
    uint64_t remap_gen;
    struct aiorcu_reader_line *remap_line;
    PyObject *owner;        /* keeps the memory behind ctl and the slots alive */
    PyObject *var;          /* ContextVar of task-section records */
    PyObject *reader_delay; /* debug: called between phase load and increment */
    PyObject *cb_append;    /* the callback queue's append */
    PyObject *cb_wake;      /* wakes the callback worker */
    _Atomic int cb_idle;    /* no callback thread is awake to see new entries */
} DomainBaseObject;

static PyTypeObject DomainBase_Type;
static PyTypeObject Section_Type;

/* 1 and *line set (NULL: no slot) on a hit; 0 on a miss. */
static inline int cache_get(DomainBaseObject *d, struct aiorcu_reader_line **line)
{
    struct cache_entry *e = &tls.e[d->serial & (CACHE_WAYS - 1)];
    if (e->domain != d->serial ||
        e->epoch != atomic_load_explicit(&fork_epoch, memory_order_relaxed))
        return 0;
    struct aiorcu_reader_line *l = e->line;
    /* Relaxed: the owner word changes under the registry lock when the slot
     * is released or claimed again; this thread reads its own slot. */
    if (l && atomic_load_explicit(&l->owner, memory_order_relaxed) != e->token)
        return 0; /* released since: ask the registry again */
    *line = l;
    return 1;
}

/* The slow path: asks the domain's Python registry (which may register the
 * thread when `create`).  Returns 0 with *line set (NULL: no slot), -1 on
 * error.  May run arbitrary Python code: callers have not begun a section. */
static int lookup_line(DomainBaseObject *d, int create, struct aiorcu_reader_line **line)
{
    if (ensure_serial() < 0)
        return -1;
    PyObject *res =
        PyObject_CallMethodOneArg((PyObject *)d, str_thread_slot, create ? Py_True : Py_False);
    if (!res)
        return -1;
    struct aiorcu_reader_line *l = NULL;
    if (res != Py_None) {
        l = PyLong_AsVoidPtr(res);
        Py_DECREF(res);
        if (!l && PyErr_Occurred())
            return -1;
        if (!l || !atomic_load_explicit(&l->owner, memory_order_relaxed)) {
            PyErr_SetString(PyExc_RuntimeError, "aiorcu: the registry returned a free slot");
            return -1;
        }
    } else {
        Py_DECREF(res);
        if (create) {
            PyErr_SetString(PyExc_RuntimeError, "aiorcu: the registry gave no slot");
            return -1;
        }
    }
    struct cache_entry *e = &tls.e[d->serial & (CACHE_WAYS - 1)];
    e->domain = d->serial;
    e->line = l;
    e->token = l ? atomic_load_explicit(&l->owner, memory_order_relaxed) : 0;
    e->epoch = atomic_load_explicit(&fork_epoch, memory_order_relaxed);
    *line = l;
    return 0;
}

static inline int own_line(DomainBaseObject *d, int create, struct aiorcu_reader_line **line)
{
    if (cache_get(d, line) && (*line || !create))
        return 0;
    return lookup_line(d, create, line);
}

static int check_bound(DomainBaseObject *d)
{
    if (d->closed) {
        PyErr_SetString(RcuUsageError, "this shared domain was closed in this process; "
                                       "attach again with aiorcu.SharedDomain(name)");
        return -1;
    }
    if (d->bound)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "aiorcu: this domain was not initialised");
    return -1;
}

static PyObject *DomainBase_unbind(DomainBaseObject *d, PyObject *unused)
{
    d->closed = 1;
    Py_RETURN_NONE;
}

/* --- sections -------------------------------------------------------------- */

#define STATE_NEW    AIORCU_SECTION_NEW
#define STATE_OPEN   AIORCU_SECTION_OPEN
#define STATE_CLOSED AIORCU_SECTION_CLOSED

typedef struct {
    PyObject_HEAD DomainBaseObject *domain; /* strong: keeps the slot memory alive */
    struct aiorcu_reader_line *line;
    PyObject *prev;  /* task sections: the context's previous open record */
    void *context;   /* task sections: identity of the context entered in */
    uint64_t gen;    /* the slot generation of `kind` at entry */
    uint64_t thread; /* serial of the entering thread */
    uint64_t epoch;  /* fork_epoch at entry */
    _Atomic int state;
    int kind;
    int phase;
} SectionObject;

#define Section_Check(op) Py_IS_TYPE(op, &Section_Type)

#ifndef Py_GIL_DISABLED
/* The GIL protects the free list, as it protects CPython's own. */
static SectionObject *free_list[FREE_MAX];
static int nfree;
#endif

static SectionObject *section_new(DomainBaseObject *d)
{
    SectionObject *s;
#ifndef Py_GIL_DISABLED
    if (nfree) {
        s = free_list[--nfree];
        PyObject_Init((PyObject *)s, &Section_Type);
    } else
#endif
    {
        s = PyObject_New(SectionObject, &Section_Type);
        if (!s)
            return NULL;
    }
    Py_INCREF(d);
    s->domain = d;
    s->line = NULL;
    s->prev = NULL;
    s->context = NULL;
    s->gen = s->thread = s->epoch = 0;
    atomic_store_explicit(&s->state, STATE_NEW, memory_order_relaxed);
    s->kind = s->phase = 0;
    return s;
}

/* Whether the section's counts still stand (the slot was not released). */
static inline int section_counted(SectionObject *s)
{
    return atomic_load_explicit(&s->line->gen[s->kind], memory_order_relaxed) == s->gen;
}

/* Uncounts a section whose close this thread won.  Returns 1 when it ran on
 * a thread other than the entering one (the core's locked release);
 * *released says whether a count was still there to drop (not when the
 * slot was released since: thread exit, fork). */
static int section_uncount(SectionObject *s, int *released)
{
    DomainBaseObject *d = s->domain;
    if (d->shared && s->epoch != atomic_load_explicit(&fork_epoch, memory_order_relaxed)) {
        /* Entered before a fork, in a shared domain: its count is the
         * parent's (another process still using it), unless this is the
         * forking thread's `with` section, which the child counts in the
         * slot it adopted. */
        *released = 0;
        if (s->kind == AIORCU_KIND_THREAD && s->thread == tls.serial &&
            d->remap_thread == tls.serial && s->epoch < d->remap_epoch && d->remap_line &&
            atomic_load_explicit(&d->remap_line->gen[s->kind], memory_order_relaxed) ==
                d->remap_gen) {
            *released = 1;
            if (aiorcu_read_uncount(d->ctl, d->remap_line, s->kind, s->phase, d->fence))
                d->wake(d->core);
        }
        return s->thread != tls.serial;
    }
    if (s->thread == tls.serial) {
        /* The entering thread: its slot cannot be released under it, so
         * the generation check and the decrement need no lock. */
        *released = section_counted(s);
        if (*released && aiorcu_read_uncount(d->ctl, s->line, s->kind, s->phase, d->fence))
            d->wake(d->core);
        return 0;
    }
    *released = d->release(d->core, s->line, s->kind, s->phase, s->gen);
    return 1;
}

/* The exactly-once close.  Returns the state the section was in. */
static inline int section_close(SectionObject *s)
{
    int expected = STATE_OPEN;
    /* acq_rel: pairs with the release store of STATE_OPEN at entry, so a
     * thread that closes a section sees its line, phase and generation. */
    if (atomic_compare_exchange_strong_explicit(&s->state, &expected, STATE_CLOSED,
                                                memory_order_acq_rel, memory_order_acquire))
        return STATE_OPEN;
    return expected;
}

/* Reports or raises a misuse through the domain's Python side:
 * problem(what, kind, entering thread serial, exc_type). */
static PyObject *section_problem(SectionObject *s, const char *what, PyObject *exc_type)
{
    PyObject *args[] = {
        (PyObject *)s->domain,         PyUnicode_FromString(what),
        PyLong_FromLong(s->kind),      PyLong_FromUnsignedLongLong(s->thread),
        exc_type ? exc_type : Py_None,
    };
    PyObject *res = NULL;
    if (args[1] && args[2] && args[3])
        res = PyObject_VectorcallMethod(str_section_problem, args,
                                        5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(args[1]);
    Py_XDECREF(args[2]);
    Py_XDECREF(args[3]);
    return res;
}

static int enter_common(SectionObject *s, int kind)
{
    DomainBaseObject *d = s->domain;
    if (atomic_load_explicit(&s->state, memory_order_relaxed) != STATE_NEW) {
        PyErr_SetString(RcuUsageError,
                        "this read section was entered already; each `domain.read()` is one "
                        "section: write `with domain.read():` (or `async with`) each time");
        return -1;
    }
    struct aiorcu_reader_line *line;
    if (own_line(d, 1, &line) < 0)
        return -1;
    if (kind == AIORCU_KIND_TASK) {
        /* Allocate before the phase load (see reader.h): link to the
         * context's innermost open record, then push this one. */
        PyObject *prev;
        if (PyContextVar_Get(d->var, NULL, &prev) < 0)
            return -1;
        while (prev && Section_Check(prev) &&
               atomic_load_explicit(&((SectionObject *)prev)->state, memory_order_relaxed) !=
                   STATE_OPEN) {
            PyObject *next = ((SectionObject *)prev)->prev;
            Py_XINCREF(next);
            Py_DECREF(prev);
            prev = next;
        }
        PyObject *token = PyContextVar_Set(d->var, (PyObject *)s);
        if (!token) {
            Py_XDECREF(prev);
            return -1;
        }
        Py_DECREF(token);
        Py_XSETREF(s->prev, prev);
        s->context = PyThreadState_Get()->context;
    }
    int p = aiorcu_read_phase(d->ctl);
    if (d->reader_delay) {
        /* Debug only: widens the window between the phase load and the
         * increment, to build the straggler of "why wait twice". */
        PyObject *r = PyObject_CallNoArgs(d->reader_delay);
        if (!r)
            return -1;
        Py_DECREF(r);
    }
    aiorcu_read_count(line, kind, p, d->fence);
    s->line = line;
    s->gen = atomic_load_explicit(&line->gen[kind], memory_order_relaxed);
    s->thread = tls.serial;
    s->epoch = atomic_load_explicit(&fork_epoch, memory_order_relaxed);
    s->kind = kind;
    s->phase = p;
    /* Release: pairs with the acq_rel compare-and-swap of the close. */
    atomic_store_explicit(&s->state, STATE_OPEN, memory_order_release);
    return 0;
}

static int context_holds(SectionObject *s);

/* Closes a section from __exit__/__aexit__.  0: closed here, normally;
 * -1: an exception is set; 1: a misuse was reported and not raised. */
static int exit_common(SectionObject *s, int kind, PyObject *exc_type)
{
    int was = section_close(s);
    if (was != STATE_OPEN) {
        PyErr_SetString(RcuUsageError,
                        was == STATE_NEW
                            ? "left a read section that was never entered; use `with "
                              "domain.read():` rather than calling __exit__ by hand"
                            : "this read section was left already; a section closes exactly "
                              "once");
        return -1;
    }
    int released;
    int foreign = section_uncount(s, &released);
    const char *problem = foreign ? "thread" : s->kind != kind ? "kind" : NULL;
    if (!problem && kind == AIORCU_KIND_TASK && released && exc_type && PyType_Check(exc_type) &&
        PyType_IsSubtype((PyTypeObject *)exc_type, (PyTypeObject *)PyExc_GeneratorExit)) {
        /* Closed by GeneratorExit: a coroutine or async generator being
         * finalized.  Outside the context that holds the section, that is
         * a task or generator dropped while inside (or its loop closed):
         * released now, and worth a report. */
        int mine = context_holds(s);
        if (mine < 0)
            return -1;
        if (!mine)
            problem = "dropped";
    }
    if (!problem)
        return 0;
    PyObject *res = section_problem(s, problem, exc_type);
    if (!res)
        return -1;
    Py_DECREF(res);
    return 1;
}

/* Whether the current context's record chain holds `s`; -1 on error. */
static int context_holds(SectionObject *s)
{
    PyObject *v;
    if (PyContextVar_Get(s->domain->var, NULL, &v) < 0)
        return -1;
    int found = 0;
    for (PyObject *r = v; r && Section_Check(r); r = ((SectionObject *)r)->prev)
        if (r == (PyObject *)s) {
            found = 1;
            break;
        }
    Py_XDECREF(v);
    return found;
}

static PyObject *Section_enter(SectionObject *s, PyObject *unused)
{
    if (enter_common(s, AIORCU_KIND_THREAD) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Section_exit(SectionObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (exit_common(s, AIORCU_KIND_THREAD, nargs > 0 ? args[0] : NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* A completed awaitable: its __await__ is itself, and iterating it stops at
 * once with None.  Stateless, so one object serves every section. */
static PyObject ready_obj;

static PyObject *Section_aenter(SectionObject *s, PyObject *unused)
{
    if (enter_common(s, AIORCU_KIND_TASK) < 0)
        return NULL;
    return Py_NewRef(&ready_obj);
}

static PyObject *Section_aexit(SectionObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (exit_common(s, AIORCU_KIND_TASK, nargs > 0 ? args[0] : NULL) < 0)
        return NULL;
    return Py_NewRef(&ready_obj);
}

static void Section_dealloc(SectionObject *s)
{
    if (atomic_load_explicit(&s->state, memory_order_relaxed) == STATE_OPEN &&
        section_close(s) == STATE_OPEN) {
        /* Collected while open: its task or generator was dropped, or a
         * loop was closed.  Release it now, on whatever thread this is,
         * then report it (keeping any exception being raised). */
        int released;
        section_uncount(s, &released);
        /* Reported only when it still held a count: a section whose slot
         * was released before (its thread's exit was reported then; a fork
         * child's phantoms are not news) changes nothing. */
        if (released) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyObject *res = section_problem(s, "collected", NULL);
            if (!res)
                PyErr_WriteUnraisable((PyObject *)s->domain);
            Py_XDECREF(res);
            PyErr_Restore(type, value, tb);
        }
    }
    Py_CLEAR(s->prev);
    Py_CLEAR(s->domain);
#ifndef Py_GIL_DISABLED
    if (nfree < FREE_MAX) {
        free_list[nfree++] = s;
        return;
    }
#endif
    PyObject_Free(s);
}

static PyObject *Section_repr(SectionObject *s)
{
    int state = atomic_load_explicit(&s->state, memory_order_relaxed);
    const char *names[] = {"new", "open", "closed"};
    if (state == STATE_NEW)
        return PyUnicode_FromFormat("<aiorcu.ReadSection new>");
    return PyUnicode_FromFormat("<aiorcu.ReadSection %s %s phase=%d>", names[state],
                                s->kind == AIORCU_KIND_THREAD ? "with" : "async with", s->phase);
}

static PyObject *Section_get_open(SectionObject *s, void *c)
{
    return PyBool_FromLong(atomic_load_explicit(&s->state, memory_order_relaxed) == STATE_OPEN);
}

static PyObject *Section_get_counted(SectionObject *s, void *c)
{
    int open = atomic_load_explicit(&s->state, memory_order_relaxed) == STATE_OPEN;
    return PyBool_FromLong(open && section_counted(s));
}

static PyObject *Section_get_prev(SectionObject *s, void *c)
{
    return Py_NewRef(s->prev ? s->prev : Py_None);
}

static PyObject *Section_get_thread(SectionObject *s, void *c)
{
    return PyLong_FromUnsignedLongLong(s->thread);
}

static PyObject *Section_get_kind(SectionObject *s, void *c)
{
    if (atomic_load_explicit(&s->state, memory_order_relaxed) == STATE_NEW)
        Py_RETURN_NONE;
    return PyUnicode_FromString(s->kind == AIORCU_KIND_THREAD ? "thread" : "task");
}

static PyObject *Section_get_domain(SectionObject *s, void *c)
{
    return Py_NewRef(s->domain);
}

static PyMethodDef Section_methods[] = {
    {"__enter__", (PyCFunction)Section_enter, METH_NOARGS,
     "Enters the section (thread code); returns None."},
    {"__exit__", (PyCFunction)(void (*)(void))Section_exit, METH_FASTCALL,
     "Leaves the section; never suppresses an exception."},
    {"__aenter__", (PyCFunction)Section_aenter, METH_NOARGS,
     "Enters the section (task code); returns a completed awaitable."},
    {"__aexit__", (PyCFunction)(void (*)(void))Section_aexit, METH_FASTCALL,
     "Leaves the section; returns a completed awaitable."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Section_getset[] = {
    {"open", (getter)Section_get_open, NULL, "Entered and not yet left.", NULL},
    {"counted", (getter)Section_get_counted, NULL,
     "Open, and its count still stands (its slot was not released).", NULL},
    {"kind", (getter)Section_get_kind, NULL, "\"thread\", \"task\", or None before entry.", NULL},
    {"domain", (getter)Section_get_domain, NULL, "The section's domain.", NULL},
    {"_prev", (getter)Section_get_prev, NULL, NULL, NULL},
    {"_thread", (getter)Section_get_thread, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Section_doc,
             "One read section of a domain, from `Domain.read()`.\n\n"
             "Enter it once, at once: ``with domain.read():`` in thread code, ``async "
             "with domain.read():`` in task code.  It counts in the grace-period phase "
             "current when it entered, and its exit closes exactly this section, "
             "wherever the exit runs.  Leaving it on another thread than the one that "
             "entered it releases it and raises `RcuUsageError`; a section "
             "garbage-collected while open is released and reported on the ``aiorcu`` "
             "logger.");

static PyTypeObject Section_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aiorcu.ReadSection",
    .tp_basicsize = sizeof(SectionObject),
    .tp_dealloc = (destructor)Section_dealloc,
    .tp_repr = (reprfunc)Section_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Section_doc,
    .tp_methods = Section_methods,
    .tp_getset = Section_getset,
};

static PyObject *Ready_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *Ready_next(PyObject *self)
{
    return NULL; /* StopIteration(None), without making an exception */
}

static PyAsyncMethods Ready_async = {.am_await = Ready_await};

static PyTypeObject Ready_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aiorcu._hotpath.Ready",
    .tp_basicsize = sizeof(PyObject),
    .tp_as_async = &Ready_async,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An awaitable that is complete already.",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = Ready_next,
};

/* --- "inside a read section?" ------------------------------------------- */

/* 1 when the current context holds an open task section of `d` entered on
 * this thread whose count stands; 0 if not; -1 on error. */
static int task_inside(DomainBaseObject *d)
{
    PyObject *v;
    if (PyContextVar_Get(d->var, NULL, &v) < 0)
        return -1;
    int found = 0;
    /* No Python code runs during the walk, and `v` keeps the chain alive. */
    for (PyObject *r = v; r && Section_Check(r); r = ((SectionObject *)r)->prev) {
        SectionObject *s = (SectionObject *)r;
        if (s->thread == tls.serial && tls.serial &&
            atomic_load_explicit(&s->state, memory_order_acquire) == STATE_OPEN &&
            (!d->shared || s->epoch == atomic_load_explicit(&fork_epoch, memory_order_relaxed)) &&
            section_counted(s)) {
            found = 1;
            break;
        }
    }
    Py_XDECREF(v);
    return found;
}

/* This thread's open `with` sections in `d` (0 without a slot); -1 on error. */
static inline int64_t thread_sections(DomainBaseObject *d)
{
    struct aiorcu_reader_line *line;
    if (own_line(d, 0, &line) < 0)
        return -1;
    if (!line)
        return 0;
    return (int64_t)(atomic_load_explicit(&line->count[AIORCU_COUNT(AIORCU_KIND_THREAD, 0)],
                                          memory_order_relaxed) +
                     atomic_load_explicit(&line->count[AIORCU_COUNT(AIORCU_KIND_THREAD, 1)],
                                          memory_order_relaxed));
}

/* 1 inside, 0 outside, -1 error. */
static inline int inside(DomainBaseObject *d)
{
    int64_t n = thread_sections(d);
    if (n)
        return n > 0 ? 1 : -1;
    return task_inside(d);
}

/* Raises the domain's "outside a read section" error for `what`. */
static int refuse_outside(DomainBaseObject *d, const char *what)
{
    PyObject *res = PyObject_CallMethod((PyObject *)d, "_refuse_outside", "s", what);
    Py_XDECREF(res);
    if (res && !PyErr_Occurred())
        PyErr_SetString(RcuUsageError, what);
    return -1;
}

static inline int require_inside(DomainBaseObject *d, const char *what)
{
    int in = inside(d);
    if (in > 0)
        return 0;
    if (in < 0)
        return -1;
    return refuse_outside(d, what);
}

/* --- DomainBase methods ---------------------------------------------------- */

static PyObject *DomainBase_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    DomainBaseObject *d = (DomainBaseObject *)type->tp_alloc(type, 0);
    if (!d)
        return NULL;
    d->serial = atomic_fetch_add_explicit(&next_domain_serial, 1, memory_order_relaxed) + 1;
    atomic_init(&d->cb_idle, 1);
    return (PyObject *)d;
}

static int DomainBase_traverse(DomainBaseObject *d, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(d));
    Py_VISIT(d->owner);
    Py_VISIT(d->var);
    Py_VISIT(d->reader_delay);
    Py_VISIT(d->cb_append);
    Py_VISIT(d->cb_wake);
    return 0;
}

/* Breaks cycles through the callback hooks only: `owner` (the memory that
 * sections and slots point into) stays until the domain itself is freed,
 * which cannot happen while a section references it. */
static int DomainBase_clear(DomainBaseObject *d)
{
    Py_CLEAR(d->reader_delay);
    Py_CLEAR(d->cb_append);
    Py_CLEAR(d->cb_wake);
    return 0;
}

static void DomainBase_dealloc(DomainBaseObject *d)
{
    PyObject_GC_UnTrack(d);
    DomainBase_clear(d);
    Py_CLEAR(d->var);
    Py_CLEAR(d->owner);
    /* A Python subclass's instance: subtype_dealloc drops the type's
     * reference after this, as the base is a static type. */
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyObject *DomainBase_bind(DomainBaseObject *d, PyObject *args)
{
    PyObject *owner, *var, *ctl, *core, *wake, *release;
    int fence, shared = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOp|p:_bind", &owner, &var, &ctl, &core, &wake, &release,
                          &fence, &shared))
        return NULL;
    if (d->bound) {
        PyErr_SetString(PyExc_RuntimeError, "aiorcu: domain bound twice");
        return NULL;
    }
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "_bind: var must be a ContextVar");
        return NULL;
    }
    void *p_ctl = PyLong_AsVoidPtr(ctl), *p_core = PyLong_AsVoidPtr(core);
    void *p_wake = PyLong_AsVoidPtr(wake), *p_release = PyLong_AsVoidPtr(release);
    if (PyErr_Occurred())
        return NULL;
    if (!p_ctl || !p_wake || !p_release) {
        PyErr_SetString(PyExc_ValueError, "_bind: null address");
        return NULL;
    }
    d->ctl = p_ctl;
    d->core = p_core;
    d->wake = (wake_fn)p_wake;
    d->release = (release_fn)p_release;
    d->fence = fence;
    d->shared = shared;
    Py_XSETREF(d->owner, Py_NewRef(owner));
    Py_XSETREF(d->var, Py_NewRef(var));
    d->bound = 1;
    Py_RETURN_NONE;
}

static PyObject *DomainBase_read(DomainBaseObject *d, PyObject *unused)
{
    if ((!d->bound || d->closed) && check_bound(d) < 0)
        return NULL;
    return (PyObject *)section_new(d);
}

static PyObject *DomainBase_inside(DomainBaseObject *d, PyObject *unused)
{
    int in = inside(d);
    return in < 0 ? NULL : PyBool_FromLong(in);
}

static PyObject *DomainBase_task_inside(DomainBaseObject *d, PyObject *unused)
{
    int in = task_inside(d);
    return in < 0 ? NULL : PyBool_FromLong(in);
}

/* (with sections, task sections) open in this thread's slot, without
 * registering the thread. */
static PyObject *DomainBase_thread_counts(DomainBaseObject *d, PyObject *unused)
{
    struct aiorcu_reader_line *line;
    if (own_line(d, 0, &line) < 0)
        return NULL;
    uint64_t c[AIORCU_NCOUNTS] = {0};
    for (int i = 0; line && i < AIORCU_NCOUNTS; i++)
        c[i] = atomic_load_explicit(&line->count[i], memory_order_relaxed);
    unsigned long long with = c[0] + c[1], tasks = c[2] + c[3];
    return Py_BuildValue("KK", with, tasks);
}

static PyObject *DomainBase_set_reader_delay(DomainBaseObject *d, PyObject *fn)
{
    Py_XSETREF(d->reader_delay, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *DomainBase_set_callbacks(DomainBaseObject *d, PyObject *args)
{
    PyObject *append, *wake;
    if (!PyArg_ParseTuple(args, "OO:_set_callbacks", &append, &wake))
        return NULL;
    Py_XSETREF(d->cb_append, Py_NewRef(append));
    Py_XSETREF(d->cb_wake, Py_NewRef(wake));
    Py_RETURN_NONE;
}

static PyObject *DomainBase_get_cb_idle(DomainBaseObject *d, void *c)
{
    return PyBool_FromLong(atomic_load(&d->cb_idle));
}

static int DomainBase_set_cb_idle(DomainBaseObject *d, PyObject *value, void *c)
{
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    /* seq_cst store, then a full fence: the worker then re-reads the queue.
     * Pairs with the producer's fence between its append and its load of
     * cb_idle (DomainBase_call_after): one of the two sees the other. */
    atomic_store(&d->cb_idle, v);
    atomic_thread_fence(memory_order_seq_cst);
    return 0;
}

/* 1 if fn is a coroutine function (inspect.iscoroutinefunction), 0 if not,
 * -1 on error.  Plain functions, bound methods and builtins are decided
 * here; anything else (partial objects, classes) asks inspect. */
static int is_coroutine_function(PyObject *fn)
{
    PyObject *f = fn;
    if (PyMethod_Check(f))
        f = PyMethod_GET_FUNCTION(f);
    if (PyCFunction_Check(f))
        return 0;
    if (PyFunction_Check(f)) {
        PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(f);
        if (code->co_flags & CO_COROUTINE)
            return 1;
        PyObject *dict = ((PyFunctionObject *)f)->func_dict;
        if (!dict || PyDict_GET_SIZE(dict) == 0)
            return 0;
    }
    PyObject *r = PyObject_CallOneArg(iscoroutinefunction, fn);
    if (!r)
        return -1;
    int yes = PyObject_IsTrue(r);
    Py_DECREF(r);
    return yes;
}

static PyObject *DomainBase_call_after(DomainBaseObject *d, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_after_grace_period() needs a function to call");
        return NULL;
    }
    PyObject *fn = args[0];
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "call_after_grace_period() needs a callable, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    int coro = is_coroutine_function(fn);
    if (coro < 0)
        return NULL;
    if (coro) {
        PyErr_Format(PyExc_TypeError,
                     "call_after_grace_period() runs callbacks on a thread, so it cannot "
                     "await %R; pass a plain function (for example one that schedules the "
                     "coroutine on your loop with asyncio.run_coroutine_threadsafe), or "
                     "use `await cell.replace(new, retire=...)`, which awaits it",
                     fn);
        return NULL;
    }
    if (d->closed) {
        check_bound(d);
        return NULL;
    }
    if (!d->cb_append) {
        PyErr_SetString(PyExc_RuntimeError, "aiorcu: this domain has no callback queue");
        return NULL;
    }
    PyObject *entry;
    if (nargs == 1) {
        entry = Py_NewRef(fn);
    } else {
        PyObject *rest = PyTuple_New(nargs - 1);
        if (!rest)
            return NULL;
        for (Py_ssize_t i = 1; i < nargs; i++)
            PyTuple_SET_ITEM(rest, i - 1, Py_NewRef(args[i]));
        entry = PyTuple_Pack(2, fn, rest);
        Py_DECREF(rest);
        if (!entry)
            return NULL;
    }
    PyObject *res = PyObject_CallOneArg(d->cb_append, entry);
    Py_DECREF(entry);
    if (!res)
        return NULL;
    Py_DECREF(res);
    /* Append, full fence, then read cb_idle: pairs with the worker's store
     * of cb_idle and its fence before it re-reads the queue. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&d->cb_idle, memory_order_relaxed) && d->cb_wake) {
        res = PyObject_CallNoArgs(d->cb_wake);
        if (!res)
            return NULL;
        Py_DECREF(res);
    }
    Py_RETURN_NONE;
}

/* In a fork child, on the forking thread, after the core kept this thread's
 * slot: the child keeps the forking context's own task sections and drops
 * every other task section of the slot (they belong to tasks that will not
 * run here).  Their counts are rebuilt from the kept sections under a new
 * generation, so a dropped section's late exit or collection changes
 * nothing. */
static PyObject *DomainBase_fork_child(DomainBaseObject *d, PyObject *unused)
{
    struct aiorcu_reader_line *line;
    if (!d->bound || own_line(d, 0, &line) < 0 || !line) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *v;
    if (PyContextVar_Get(d->var, NULL, &v) < 0)
        return NULL;
    void *context = PyThreadState_Get()->context;
    uint64_t gen = atomic_load(&line->gen[AIORCU_KIND_TASK]);
    uint64_t kept[2] = {0, 0};
    for (int pass = 0; pass < 2; pass++) {
        for (PyObject *r = v; r && Section_Check(r); r = ((SectionObject *)r)->prev) {
            SectionObject *s = (SectionObject *)r;
            int keep = atomic_load(&s->state) == STATE_OPEN && s->kind == AIORCU_KIND_TASK &&
                       s->thread == tls.serial && s->line == line && s->context == context &&
                       s->gen == gen;
            if (keep && pass == 0)
                kept[s->phase]++;
            else if (keep)
                s->gen = gen + 1;
        }
        if (pass == 0) {
            /* One thread is left in the child: plain order suffices. */
            atomic_store(&line->gen[AIORCU_KIND_TASK], gen + 1);
            for (int p = 0; p < 2; p++)
                atomic_store(&line->count[AIORCU_COUNT(AIORCU_KIND_TASK, p)], kept[p]);
        }
    }
    Py_XDECREF(v);
    Py_RETURN_NONE;
}

/* The forking context's own open task sections on this thread, counted in
 * `line` under generation `gen` (what a fork child keeps). */
static int kept_task_record(SectionObject *s, struct aiorcu_reader_line *line, uint64_t gen,
                            uint64_t epoch, void *context)
{
    return atomic_load(&s->state) == STATE_OPEN && s->kind == AIORCU_KIND_TASK &&
           s->thread == tls.serial && s->line == line && s->context == context && s->gen == gen &&
           s->epoch == epoch;
}

/* Shared domains, before a fork: what the child will keep, as counts by
 * AIORCU_COUNT(kind, phase): this thread's `with` sections and the current
 * context's own task sections. */
static PyObject *DomainBase_fork_counts(DomainBaseObject *d, PyObject *unused)
{
    struct aiorcu_reader_line *line;
    unsigned long long c[AIORCU_NCOUNTS] = {0, 0, 0, 0};
    unsigned long long task_gen = 0, epoch = atomic_load(&fork_epoch);
    if (own_line(d, 0, &line) < 0)
        return NULL;
    if (line) {
        PyObject *v;
        if (PyContextVar_Get(d->var, NULL, &v) < 0)
            return NULL;
        void *context = PyThreadState_Get()->context;
        task_gen = atomic_load(&line->gen[AIORCU_KIND_TASK]);
        for (PyObject *r = v; r && Section_Check(r); r = ((SectionObject *)r)->prev)
            if (kept_task_record((SectionObject *)r, line, task_gen, epoch, context))
                c[AIORCU_COUNT(AIORCU_KIND_TASK, ((SectionObject *)r)->phase)]++;
        Py_XDECREF(v);
        for (int p = 0; p < 2; p++)
            c[AIORCU_COUNT(AIORCU_KIND_THREAD, p)] =
                atomic_load(&line->count[AIORCU_COUNT(AIORCU_KIND_THREAD, p)]);
    }
    return Py_BuildValue("((KKKK)KKK)", c[0], c[1], c[2], c[3], (unsigned long long)(uintptr_t)line,
                         task_gen, epoch);
}

/* Shared domains, in a fork child on the forking thread, once it adopted
 * the bridge slot at `line`: the task sections the parent counted there
 * move to it; `with` sections from before the fork count there from now on
 * (section_uncount remaps them). */
static PyObject *DomainBase_adopted(DomainBaseObject *d, PyObject *args)
{
    PyObject *addr, *parent_line_addr;
    unsigned long long parent_task_gen, parent_epoch;
    if (!PyArg_ParseTuple(args, "OOKK:_adopted", &addr, &parent_line_addr, &parent_task_gen,
                          &parent_epoch))
        return NULL;
    struct aiorcu_reader_line *line = PyLong_AsVoidPtr(addr);
    struct aiorcu_reader_line *parent_line = PyLong_AsVoidPtr(parent_line_addr);
    if (PyErr_Occurred())
        return NULL;
    if (ensure_serial() < 0)
        return NULL;
    uint64_t epoch = atomic_load(&fork_epoch);
    d->remap_thread = tls.serial;
    d->remap_epoch = epoch;
    d->remap_line = line;
    d->remap_gen = atomic_load(&line->gen[AIORCU_KIND_THREAD]);
    PyObject *v;
    if (PyContextVar_Get(d->var, NULL, &v) < 0)
        return NULL;
    void *context = PyThreadState_Get()->context;
    uint64_t gen = atomic_load(&line->gen[AIORCU_KIND_TASK]);
    for (PyObject *r = v; r && Section_Check(r); r = ((SectionObject *)r)->prev) {
        SectionObject *s = (SectionObject *)r;
        if (kept_task_record(s, parent_line, parent_task_gen, parent_epoch, context)) {
            s->line = line;
            s->gen = gen;
            s->epoch = epoch;
        }
    }
    Py_XDECREF(v);
    Py_RETURN_NONE;
}

/* The current fork epoch (shared domains record it before a fork). */
static PyObject *DomainBase_fork_epoch(DomainBaseObject *d, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(atomic_load(&fork_epoch));
}

static PyMethodDef DomainBase_methods[] = {
    {"read", (PyCFunction)DomainBase_read, METH_NOARGS, NULL},
    {"call_after_grace_period", (PyCFunction)(void (*)(void))DomainBase_call_after, METH_FASTCALL,
     NULL},
    {"_bind", (PyCFunction)DomainBase_bind, METH_VARARGS, NULL},
    {"_inside", (PyCFunction)DomainBase_inside, METH_NOARGS,
     "Whether the caller is inside a read section of this domain."},
    {"_task_inside", (PyCFunction)DomainBase_task_inside, METH_NOARGS,
     "Whether this context holds an open task section entered on this thread."},
    {"_thread_counts", (PyCFunction)DomainBase_thread_counts, METH_NOARGS,
     "(with, async with) sections open in this thread's slot."},
    {"_set_reader_delay", (PyCFunction)DomainBase_set_reader_delay, METH_O, NULL},
    {"_set_callbacks", (PyCFunction)DomainBase_set_callbacks, METH_VARARGS, NULL},
    {"_fork_child", (PyCFunction)DomainBase_fork_child, METH_NOARGS, NULL},
    {"_fork_counts", (PyCFunction)DomainBase_fork_counts, METH_NOARGS, NULL},
    {"_unbind", (PyCFunction)DomainBase_unbind, METH_NOARGS, NULL},
    {"_adopted", (PyCFunction)DomainBase_adopted, METH_VARARGS, NULL},
    {"_fork_epoch", (PyCFunction)DomainBase_fork_epoch, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef DomainBase_getset[] = {
    {"_callbacks_idle", (getter)DomainBase_get_cb_idle, (setter)DomainBase_set_cb_idle, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DomainBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aiorcu._hotpath.DomainBase",
    .tp_basicsize = sizeof(DomainBaseObject),
    .tp_dealloc = (destructor)DomainBase_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of a domain: its read path.",
    .tp_traverse = (traverseproc)DomainBase_traverse,
    .tp_clear = (inquiry)DomainBase_clear,
    .tp_methods = DomainBase_methods,
    .tp_getset = DomainBase_getset,
    .tp_new = DomainBase_new,
};

/* --- RcuCell ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD DomainBaseObject *domain;
    PyObject *value;
} CellBaseObject;

static int CellBase_init(CellBaseObject *c, PyObject *args, PyObject *kwds)
{
    PyObject *domain, *value;
    if (!PyArg_ParseTuple(args, "O!O:CellBase", &DomainBase_Type, &domain, &value))
        return -1;
    Py_XSETREF(c->domain, (DomainBaseObject *)Py_NewRef(domain));
    Py_XSETREF(c->value, Py_NewRef(value));
    return 0;
}

static int CellBase_traverse(CellBaseObject *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->domain);
    Py_VISIT(c->value);
    return 0;
}

static int CellBase_clear(CellBaseObject *c)
{
    Py_CLEAR(c->value);
    return 0;
}

static void CellBase_dealloc(CellBaseObject *c)
{
    PyObject_GC_UnTrack(c);
    CellBase_clear(c);
    Py_CLEAR(c->domain);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* The published object, inside a read section only.  The load needs no
 * fence (M1 pairs with the section's increment, as for any RCU read); the
 * new reference it takes relies on the GIL, or on free-threaded CPython's
 * own handling of concurrent reference counts (not yet a target). */
static PyObject *CellBase_get(CellBaseObject *c, PyObject *unused)
{
    if (require_inside(c->domain, "RcuCell.get()") < 0)
        return NULL;
    return Py_NewRef(c->value);
}

/* Stores `new` and returns the old value; the caller holds the writer lock. */
static PyObject *CellBase_swap(CellBaseObject *c, PyObject *value)
{
    PyObject *old = c->value;
    c->value = Py_NewRef(value);
    return old;
}

static PyObject *CellBase_get_domain(CellBaseObject *c, void *unused)
{
    return Py_NewRef(c->domain);
}

static PyObject *CellBase_get_current(CellBaseObject *c, void *unused)
{
    return Py_NewRef(c->value);
}

PyDoc_STRVAR(CellBase_get_doc,
             "get($self, /)\n--\n\n"
             "Returns the published object; only inside a read section of the cell's "
             "domain.\n\n"
             "The object stays safe to use until the section ends: a writer retires it "
             "only after a grace period that waits for this section.\n\n"
             "Raises:\n"
             "    RcuUsageError: The caller is outside any read section of the domain "
             "(this thread's ``with`` or this task's ``async with``).");

static PyMethodDef CellBase_methods[] = {
    {"get", (PyCFunction)CellBase_get, METH_NOARGS, CellBase_get_doc},
    {"_swap", (PyCFunction)CellBase_swap, METH_O, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef CellBase_getset[] = {
    {"_domain", (getter)CellBase_get_domain, NULL, NULL, NULL},
    {"_current", (getter)CellBase_get_current, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CellBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aiorcu._hotpath.CellBase",
    .tp_basicsize = sizeof(CellBaseObject),
    .tp_dealloc = (destructor)CellBase_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of RcuCell: the published value and get().",
    .tp_traverse = (traverseproc)CellBase_traverse,
    .tp_clear = (inquiry)CellBase_clear,
    .tp_methods = CellBase_methods,
    .tp_getset = CellBase_getset,
    .tp_init = (initproc)CellBase_init,
    .tp_new = PyType_GenericNew,
};

/* --- bitmaps ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD DomainBaseObject *domain;
    PyObject *owner; /* keeps `words` alive */
    const uint64_t *words;
    int64_t pages;
} BitmapBaseObject;

static PyTypeObject BitmapBase_Type;

static int BitmapBase_traverse(BitmapBaseObject *b, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(b));
    Py_VISIT(b->domain);
    Py_VISIT(b->owner);
    return 0;
}

static void BitmapBase_dealloc(BitmapBaseObject *b)
{
    PyObject_GC_UnTrack(b);
    Py_CLEAR(b->domain);
    Py_CLEAR(b->owner);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *BitmapBase_bind(BitmapBaseObject *b, PyObject *args)
{
    PyObject *domain, *owner, *addr;
    long long pages;
    if (!PyArg_ParseTuple(args, "O!OOL:_bind_words", &DomainBase_Type, &domain, &owner, &addr,
                          &pages))
        return NULL;
    void *words = PyLong_AsVoidPtr(addr);
    if (PyErr_Occurred())
        return NULL;
    if (!words || pages < 1) {
        PyErr_SetString(PyExc_ValueError, "_bind_words: no words");
        return NULL;
    }
    Py_XSETREF(b->domain, (DomainBaseObject *)Py_NewRef(domain));
    Py_XSETREF(b->owner, Py_NewRef(owner));
    b->words = words;
    b->pages = pages;
    Py_RETURN_NONE;
}

static inline int page_bit(const uint64_t *words, int64_t page)
{
    /* Relaxed, single-copy atomic: each page reads as before or after a
     * concurrent commit; the read section orders it (see bitmap.c). */
    uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&words[page >> 6], memory_order_relaxed);
    return (int)((w >> (page & 63)) & 1);
}

/* First clear page of [start, start + count), or -1; bounds checked. */
static int64_t first_clear_in(const uint64_t *words, int64_t start, int64_t count)
{
    int64_t end = start + count, pos = start;
    while (pos < end) {
        int64_t w = pos >> 6;
        int lo = (int)(pos & 63);
        int hi = end - (w << 6) >= 64 ? 64 : (int)(end - (w << 6));
        uint64_t mask =
            (hi == 64 ? ~UINT64_C(0) : (UINT64_C(1) << hi) - 1) & ~((UINT64_C(1) << lo) - 1);
        uint64_t clear =
            ~atomic_load_explicit((_Atomic uint64_t *)&words[w], memory_order_relaxed) & mask;
        if (clear)
            return (w << 6) + __builtin_ctzll(clear);
        pos = (w << 6) + hi;
    }
    return -1;
}

/* Reads an int argument; huge or negative values become -1 / INT64_MAX so
 * the range check reports them.  -2 on a type error. */
static int arg_index(PyObject *o, int64_t *out)
{
    PyObject *i = PyNumber_Index(o);
    if (!i)
        return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = overflow > 0 ? INT64_MAX : overflow < 0 ? INT64_MIN : v;
    return 0;
}

static PyObject *range_error(BitmapBaseObject *b, const char *what, PyObject *const *args,
                             Py_ssize_t nargs)
{
    PyObject *shown = nargs == 1 ? PyUnicode_FromFormat("%S", args[0])
                                 : PyUnicode_FromFormat("%S, %S", args[0], args[1]);
    if (!shown)
        return NULL;
    PyErr_Format(PyExc_IndexError, "Bitmap.%s(%U) is outside the bitmap's %lld pages (0..%lld)",
                 what, shown, (long long)b->pages, (long long)b->pages - 1);
    Py_DECREF(shown);
    return NULL;
}

static int bitmap_open(BitmapBaseObject *b)
{
    if (b->words)
        return 0;
    PyErr_SetString(RcuUsageError, "this bitmap was closed: its buffer was released");
    return -1;
}

static PyObject *BitmapBase_unbind(BitmapBaseObject *b, PyObject *unused)
{
    b->words = NULL;
    Py_RETURN_NONE;
}

static PyObject *BitmapBase_is_set(BitmapBaseObject *b, PyObject *arg)
{
    if (bitmap_open(b) < 0 || require_inside(b->domain, "Bitmap.is_set()") < 0)
        return NULL;
    int64_t page;
    if (arg_index(arg, &page) < 0)
        return NULL;
    if (page < 0 || page >= b->pages)
        return range_error(b, "is_set", &arg, 1);
    return PyBool_FromLong(page_bit(b->words, page));
}

/* first_clear() over a checked range; -2 on error. */
static int64_t range_first_clear(BitmapBaseObject *b, const char *what, PyObject *const *args,
                                 Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "Bitmap.%s() takes start and count", what);
        return -2;
    }
    int64_t start, count;
    if (arg_index(args[0], &start) < 0 || arg_index(args[1], &count) < 0)
        return -2;
    if (start < 0 || count < 0 || start > b->pages || count > b->pages - start) {
        range_error(b, what, args, 2);
        return -2;
    }
    return count ? first_clear_in(b->words, start, count) : -1;
}

static PyObject *BitmapBase_check_range(BitmapBaseObject *b, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    if (bitmap_open(b) < 0 || require_inside(b->domain, "Bitmap.check_range()") < 0)
        return NULL;
    int64_t page = range_first_clear(b, "check_range", args, nargs);
    if (page == -2)
        return NULL;
    return PyBool_FromLong(page < 0);
}

static PyObject *BitmapBase_first_clear(BitmapBaseObject *b, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    if (bitmap_open(b) < 0 || require_inside(b->domain, "Bitmap.first_clear()") < 0)
        return NULL;
    int64_t page = range_first_clear(b, "first_clear", args, nargs);
    if (page == -2)
        return NULL;
    if (page < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(page);
}

static PyMethodDef BitmapBase_methods[] = {
    {"is_set", (PyCFunction)BitmapBase_is_set, METH_O, NULL},
    {"check_range", (PyCFunction)(void (*)(void))BitmapBase_check_range, METH_FASTCALL, NULL},
    {"first_clear", (PyCFunction)(void (*)(void))BitmapBase_first_clear, METH_FASTCALL, NULL},
    {"_bind_words", (PyCFunction)BitmapBase_bind, METH_VARARGS, NULL},
    {"_unbind_words", (PyCFunction)BitmapBase_unbind, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BitmapBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aiorcu._hotpath.BitmapBase",
    .tp_basicsize = sizeof(BitmapBaseObject),
    .tp_dealloc = (destructor)BitmapBase_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of Bitmap: its read methods.",
    .tp_traverse = (traverseproc)BitmapBase_traverse,
    .tp_methods = BitmapBase_methods,
    .tp_new = PyType_GenericNew,
};

/* --- guarded memory -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD BitmapBaseObject *bitmap;
    PyObject *owner; /* keeps `data` alive */
    char *data;      /* NULL once closed */
    int64_t size;
    int64_t page_size;
} MemoryBaseObject;

static int MemoryBase_traverse(MemoryBaseObject *m, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(m));
    Py_VISIT(m->bitmap);
    Py_VISIT(m->owner);
    return 0;
}

static void MemoryBase_dealloc(MemoryBaseObject *m)
{
    PyObject_GC_UnTrack(m);
    Py_CLEAR(m->owner);
    Py_CLEAR(m->bitmap);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *MemoryBase_bind(MemoryBaseObject *m, PyObject *args)
{
    PyObject *bitmap, *owner, *addr;
    long long size, page_size;
    if (!PyArg_ParseTuple(args, "O!OOLL:_bind_memory", &BitmapBase_Type, &bitmap, &owner, &addr,
                          &size, &page_size))
        return NULL;
    char *data = PyLong_AsVoidPtr(addr);
    if (PyErr_Occurred())
        return NULL;
    if (!data || size < 1 || page_size < 1) {
        PyErr_SetString(PyExc_ValueError, "_bind_memory: no memory");
        return NULL;
    }
    Py_XSETREF(m->bitmap, (BitmapBaseObject *)Py_NewRef(bitmap));
    Py_XSETREF(m->owner, Py_NewRef(owner));
    m->data = data;
    m->size = size;
    m->page_size = page_size;
    Py_RETURN_NONE;
}

/* Checks offset/length against the memory; 0 or -1 with IndexError/ValueError. */
static int span(MemoryBaseObject *m, const char *what, int64_t offset, int64_t length)
{
    int64_t size = m->size;
    if (length < 0) {
        PyErr_Format(PyExc_ValueError, "GuardedMemory.%s: length must not be negative, not %lld",
                     what, (long long)length);
        return -1;
    }
    if (offset < 0 || offset > size || length > size - offset) {
        if (length == 0)
            PyErr_Format(PyExc_IndexError,
                         "GuardedMemory.%s: offset %lld is outside the memory (0..%lld)", what,
                         (long long)offset, (long long)size);
        else
            PyErr_Format(PyExc_IndexError,
                         "GuardedMemory.%s: bytes %lld..%lld are outside the memory (0..%lld)",
                         what, (long long)offset,
                         offset > INT64_MAX - length ? (long long)INT64_MAX
                                                     : (long long)(offset + length - 1),
                         (long long)size - 1);
        return -1;
    }
    return 0;
}

/*
 * Moves `length` bytes between the memory at `offset` and `buf` inside a
 * read section this function opens itself, after checking every page the
 * span touches.  Returns 0, or -1 with AccessDenied raised (no byte moved).
 * The caller has allocated everything before: nothing here runs Python code
 * between the section's entry and its exit, except raising the denial after
 * the exit.
 */
static int guarded_copy(MemoryBaseObject *m, const char *what, int64_t offset, int64_t length,
                        char *buf, int to_memory)
{
    if (length == 0)
        return 0;
    DomainBaseObject *d = m->bitmap->domain;
    struct aiorcu_reader_line *line;
    if (own_line(d, 1, &line) < 0)
        return -1;
    int p = aiorcu_read_phase(d->ctl);
    aiorcu_read_count(line, AIORCU_KIND_THREAD, p, d->fence);
    uint64_t gen = atomic_load_explicit(&line->gen[AIORCU_KIND_THREAD], memory_order_relaxed);
    int64_t first = offset / m->page_size;
    int64_t last = (offset + length - 1) / m->page_size;
    int64_t denied = first_clear_in(m->bitmap->words, first, last - first + 1);
    if (denied < 0) {
        char *mem = m->data + offset;
        if (to_memory)
            memcpy(mem, buf, (size_t)length);
        else
            memcpy(buf, mem, (size_t)length);
    }
    if (atomic_load_explicit(&line->gen[AIORCU_KIND_THREAD], memory_order_relaxed) == gen &&
        aiorcu_read_uncount(d->ctl, line, AIORCU_KIND_THREAD, p, d->fence))
        d->wake(d->core);
    if (denied < 0)
        return 0;
    PyObject *res = PyObject_CallMethod((PyObject *)m, "_denied", "sLLL", what, (long long)offset,
                                        (long long)length, (long long)denied);
    Py_XDECREF(res);
    if (res && !PyErr_Occurred())
        PyErr_SetString(PyExc_PermissionError, "access denied");
    return -1;
}

static int memory_bound(MemoryBaseObject *m)
{
    if (m->data && m->bitmap && m->bitmap->words)
        return 0;
    PyErr_SetString(RcuUsageError, "this guarded memory was closed: its buffer was released");
    return -1;
}

static PyObject *MemoryBase_read(MemoryBaseObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t offset, length;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "GuardedMemory.read() takes offset and length");
        return NULL;
    }
    if (memory_bound(m) < 0 || arg_index(args[0], &offset) < 0 || arg_index(args[1], &length) < 0 ||
        span(m, "read", offset, length) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
    if (!out)
        return NULL;
    if (guarded_copy(m, "read", offset, length, PyBytes_AS_STRING(out), 0) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *MemoryBase_read_into(MemoryBaseObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t offset;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "GuardedMemory.read_into() takes offset and a writable buffer");
        return NULL;
    }
    if (memory_bound(m) < 0 || arg_index(args[0], &offset) < 0)
        return NULL;
    Py_buffer out;
    if (PyObject_GetBuffer(args[1], &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    int64_t length = (int64_t)out.len;
    int rc = span(m, "read_into", offset, length);
    if (rc == 0)
        rc = guarded_copy(m, "read", offset, length, out.buf, 0);
    PyBuffer_Release(&out);
    return rc < 0 ? NULL : PyLong_FromLongLong(length);
}

static PyObject *MemoryBase_write(MemoryBaseObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t offset;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "GuardedMemory.write() takes offset and data");
        return NULL;
    }
    if (memory_bound(m) < 0 || arg_index(args[0], &offset) < 0)
        return NULL;
    Py_buffer in;
    if (PyObject_GetBuffer(args[1], &in, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    int64_t length = (int64_t)in.len;
    int rc = span(m, "write", offset, length);
    if (rc == 0)
        rc = guarded_copy(m, "write", offset, length, in.buf, 1);
    PyBuffer_Release(&in);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *MemoryBase_unbind(MemoryBaseObject *m, PyObject *unused)
{
    m->data = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef MemoryBase_methods[] = {
    {"read", (PyCFunction)(void (*)(void))MemoryBase_read, METH_FASTCALL, NULL},
    {"read_into", (PyCFunction)(void (*)(void))MemoryBase_read_into, METH_FASTCALL, NULL},
    {"write", (PyCFunction)(void (*)(void))MemoryBase_write, METH_FASTCALL, NULL},
    {"_bind_memory", (PyCFunction)MemoryBase_bind, METH_VARARGS, NULL},
    {"_unbind_memory", (PyCFunction)MemoryBase_unbind, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MemoryBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aiorcu._hotpath.MemoryBase",
    .tp_basicsize = sizeof(MemoryBaseObject),
    .tp_dealloc = (destructor)MemoryBase_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of GuardedMemory: its accesses.",
    .tp_traverse = (traverseproc)MemoryBase_traverse,
    .tp_methods = MemoryBase_methods,
    .tp_new = PyType_GenericNew,
};

/* --- module -------------------------------------------------------------------- */

static PyObject *mod_configure(PyObject *m, PyObject *args)
{
    PyObject *serial_addr, *usage_error, *iscoro;
    if (!PyArg_ParseTuple(args, "OOO:configure", &serial_addr, &usage_error, &iscoro))
        return NULL;
    void *fn = PyLong_AsVoidPtr(serial_addr);
    if (!fn) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "configure: null thread_serial");
        return NULL;
    }
    thread_serial_fn = (serial_fn)fn;
    Py_XSETREF(RcuUsageError, Py_NewRef(usage_error));
    Py_XSETREF(iscoroutinefunction, Py_NewRef(iscoro));
    Py_RETURN_NONE;
}

static PyObject *mod_thread_serial(PyObject *m, PyObject *unused)
{
    if (ensure_serial() < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(tls.serial);
}

static PyMethodDef module_methods[] = {
    {"configure", mod_configure, METH_VARARGS,
     "configure(thread_serial_address, RcuUsageError, iscoroutinefunction)"},
    {"thread_serial", mod_thread_serial, METH_NOARGS,
     "The calling thread's serial, as the core's aiorcu_thread_serial()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aiorcu._hotpath",
    .m_doc = "The read side of aiorcu as CPython types (see csrc/hotpath.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__hotpath(void)
{
    pthread_atfork(NULL, NULL, fork_child_epoch);
    static PyTypeObject *types[] = {&Section_Type,  &Ready_Type,      &DomainBase_Type,
                                    &CellBase_Type, &BitmapBase_Type, &MemoryBase_Type};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    PyObject_Init(&ready_obj, &Ready_Type);
    str_thread_slot = PyUnicode_InternFromString("_thread_slot");
    str_section_problem = PyUnicode_InternFromString("_section_problem");
    if (!str_thread_slot || !str_section_problem)
        return NULL;
    PyObject *m = PyModule_Create(&hotpath_module);
    if (!m)
        return NULL;
    const char *names[] = {"ReadSection", "Ready",      "DomainBase",
                           "CellBase",    "BitmapBase", "MemoryBase"};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    if (PyModule_AddObjectRef(m, "READY", &ready_obj) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
