/* OTLP trace requests read straight from protobuf wire bytes into Python objects.
 *
 * The protobuf runtime builds a message object for every attribute of every span, and reading
 * each field builds another; at tens of thousands of spans a second that is most of a core.
 * This reader walks the bytes once and builds only what the ingest path keeps.
 *
 * It is a fast path, never the judge: it handles the shape OpenTelemetry exporters send and
 * answers "not mine" (None) for anything else (a field it does not know, a wire type other
 * than the schema's, a singular field given twice, nesting past 32 levels, invalid UTF-8, a
 * truncated body), and the caller then parses the request with the protobuf runtime, which
 * gives the authoritative answer and the error message. So for every input it either agrees
 * with the runtime or steps aside. Every read is bounds-checked against the end of its
 * enclosing message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OK 0
#define ERROR -1    /* a Python exception is set (memory) */
#define NOT_MINE 1  /* leave this request to the protobuf runtime */

#define WT_VARINT 0
#define WT_FIXED64 1
#define WT_LEN 2
#define WT_FIXED32 5

#define MAX_DEPTH 32

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

typedef struct {
    uint32_t field;
    uint32_t wire_type;
    uint64_t number;  /* the value of a varint, fixed64 or fixed32 field */
    Reader body;      /* the contents of a length-delimited field */
} Field;

/* The fields of each message the reader knows, by number: the wire type plus one (so that
 * the zero an initializer leaves for any other number means "not known here"). */
enum { V = WT_VARINT + 1, I64 = WT_FIXED64 + 1, LEN = WT_LEN + 1, I32 = WT_FIXED32 + 1 };
typedef struct {
    const uint8_t *types;
    uint32_t count;
} Schema;
#define SCHEMA(...) {(const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})}

/* ExportTraceServiceRequest, ArrayValue and KeyValueList: one repeated message, field 1. */
static const Schema LIST = SCHEMA([1] = LEN);
static const Schema RESOURCE_SPANS = SCHEMA([1] = LEN, [2] = LEN, [3] = LEN);
static const Schema RESOURCE = SCHEMA([1] = LEN, [2] = V);  /* entity_refs left to the runtime */
static const Schema SCOPE_SPANS = SCHEMA([1] = LEN, [2] = LEN, [3] = LEN);
static const Schema SCOPE = SCHEMA([1] = LEN, [2] = LEN, [3] = LEN, [4] = V);
static const Schema SPAN = SCHEMA([1] = LEN, [2] = LEN, [3] = LEN, [4] = LEN, [5] = LEN,
                                  [6] = V, [7] = I64, [8] = I64, [9] = LEN, [10] = V,
                                  [11] = LEN, [12] = V, [13] = LEN, [14] = V, [15] = LEN,
                                  [16] = I32);
static const Schema EVENT = SCHEMA([1] = I64, [2] = LEN, [3] = LEN, [4] = V);
static const Schema LINK = SCHEMA([1] = LEN, [2] = LEN, [3] = LEN, [4] = LEN, [5] = V, [6] = I32);
static const Schema STATUS = SCHEMA([2] = LEN, [3] = V);
static const Schema KEY_VALUE = SCHEMA([1] = LEN, [2] = LEN);  /* key_strindex: the runtime's */
static const Schema ANY_VALUE = SCHEMA([1] = LEN, [2] = V, [3] = V, [4] = I64, [5] = LEN,
                                       [6] = LEN, [7] = LEN);  /* string_value_strindex too */

static PyObject *KEY_NAME, *KEY_TIME_NS, *KEY_ATTRIBUTES, *B64ENCODE;

static int read_varint(Reader *r, uint64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return NOT_MINE;
        uint8_t byte = *r->p++;
        if (shift == 63 && byte > 1) return NOT_MINE;  /* more than 64 bits */
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return OK;
        }
    }
    return NOT_MINE;
}

/* The next field of a message whose fields are ``schema``; NOT_MINE for a field number it
 * does not list, or a wire type other than the one it lists. */
static int next_field(Reader *r, Schema schema, Field *f) {
    uint64_t tag, length;
    if (read_varint(r, &tag)) return NOT_MINE;
    if (tag >> 3 >= schema.count || schema.types[tag >> 3] != (tag & 7) + 1) return NOT_MINE;
    f->field = (uint32_t)(tag >> 3);
    f->wire_type = (uint32_t)(tag & 7);
    switch (f->wire_type) {
    case WT_VARINT:
        return read_varint(r, &f->number);
    case WT_FIXED64:
        if (r->end - r->p < 8) return NOT_MINE;
        f->number = 0;
        for (int i = 7; i >= 0; i--) f->number = (f->number << 8) | r->p[i];
        r->p += 8;
        return OK;
    case WT_FIXED32:
        if (r->end - r->p < 4) return NOT_MINE;
        r->p += 4;  /* only flags are fixed32, and nothing keeps them */
        return OK;
    default:  /* WT_LEN: no other wire type is in any schema */
        if (read_varint(r, &length)) return NOT_MINE;
        if (length > (uint64_t)(r->end - r->p)) return NOT_MINE;
        f->body.p = r->p;
        f->body.end = r->p + length;
        r->p += length;
        return OK;
    }
}

/* A singular field may appear once; the runtime would merge or overwrite a second one. */
static int first_time(uint32_t *seen, uint32_t field) {
    uint32_t bit = 1u << field;  /* field < 17: next_field passed only listed numbers */
    if (*seen & bit) return NOT_MINE;
    *seen |= bit;
    return OK;
}

/* A string field, decoded as the runtime would (strict UTF-8); invalid UTF-8 is not ours. */
static int read_str(const Reader *body, PyObject **out) {
    PyObject *text = PyUnicode_DecodeUTF8((const char *)body->p, body->end - body->p, NULL);
    if (text == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return NOT_MINE;
        }
        return ERROR;
    }
    Py_XSETREF(*out, text);
    return OK;
}

static int check_str(const Reader *body) {
    PyObject *text = NULL;
    int rc = read_str(body, &text);
    Py_XDECREF(text);
    return rc;
}

static PyObject *hex_str(const Reader *body) {
    static const char digits[] = "0123456789abcdef";
    Py_ssize_t size = body->end - body->p;
    PyObject *text = PyUnicode_New(size * 2, 127);
    if (text == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < size; i++) {
        out[2 * i] = (Py_UCS1)digits[body->p[i] >> 4];
        out[2 * i + 1] = (Py_UCS1)digits[body->p[i] & 15];
    }
    return text;
}

/* A bytes attribute value as the Python reader gives it: base64.b64encode(value).decode(). */
static PyObject *base64_str(const Reader *body) {
    PyObject *raw = PyBytes_FromStringAndSize((const char *)body->p, body->end - body->p);
    if (raw == NULL) return NULL;
    PyObject *encoded = PyObject_CallOneArg(B64ENCODE, raw);
    Py_DECREF(raw);
    if (encoded == NULL) return NULL;
    PyObject *text = PyUnicode_FromEncodedObject(encoded, "ascii", "strict");
    Py_DECREF(encoded);
    return text;
}

static int read_key_value(Reader r, int depth, PyObject *into);

/* An AnyValue as Python: the set member of its oneof, None when none is. */
static int read_any_value(Reader r, int depth, PyObject **out) {
    Field f, item_field;
    PyObject *value = NULL, *item = NULL;
    double real;
    int rc = OK;
    if (depth > MAX_DEPTH) return NOT_MINE;
    while (r.p < r.end) {
        if ((rc = next_field(&r, ANY_VALUE, &f))) goto fail;
        if (value != NULL) { rc = NOT_MINE; goto fail; }  /* one member of the oneof, once */
        switch (f.field) {
        case 1:  /* string_value */
            rc = read_str(&f.body, &value);
            break;
        case 2:  /* bool_value */
            value = PyBool_FromLong(f.number != 0);
            break;
        case 3:  /* int_value */
            value = PyLong_FromLongLong((long long)(int64_t)f.number);
            break;
        case 4:  /* double_value */
            memcpy(&real, &f.number, sizeof real);
            value = PyFloat_FromDouble(real);
            break;
        case 5:  /* array_value: ArrayValue { repeated AnyValue values = 1; } */
            if ((value = PyList_New(0)) == NULL) break;
            while (rc == OK && f.body.p < f.body.end) {
                if ((rc = next_field(&f.body, LIST, &item_field)) ||
                    (rc = read_any_value(item_field.body, depth + 1, &item))) {
                    break;
                }
                if (PyList_Append(value, item)) rc = ERROR;
                Py_CLEAR(item);
            }
            break;
        case 6:  /* kvlist_value: KeyValueList { repeated KeyValue values = 1; } */
            if ((value = PyDict_New()) == NULL) break;
            while (rc == OK && f.body.p < f.body.end) {
                if ((rc = next_field(&f.body, LIST, &item_field)) == OK) {
                    rc = read_key_value(item_field.body, depth + 1, value);
                }
            }
            break;
        default:  /* 7: bytes_value */
            value = base64_str(&f.body);
            break;
        }
        if (rc == OK && value == NULL) rc = ERROR;
        if (rc) goto fail;
    }
    *out = value != NULL ? value : Py_NewRef(Py_None);
    return OK;
fail:
    Py_XDECREF(value);
    Py_XDECREF(item);
    return rc;
}

/* A KeyValue, set into the dict ``into`` (a later key replaces an earlier one, as in a dict). */
static int read_key_value(Reader r, int depth, PyObject *into) {
    Field f;
    uint32_t seen = 0;
    PyObject *key = NULL, *value = NULL;
    int rc = OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, KEY_VALUE, &f)) || (rc = first_time(&seen, f.field))) break;
        rc = f.field == 1 ? read_str(&f.body, &key) : read_any_value(f.body, depth, &value);
    }
    if (rc == OK && key == NULL && (key = PyUnicode_FromStringAndSize("", 0)) == NULL) rc = ERROR;
    if (rc == OK && PyDict_SetItem(into, key, value != NULL ? value : Py_None)) rc = ERROR;
    Py_XDECREF(key);
    Py_XDECREF(value);
    return rc;
}

/* Span.Event -> {"name": str, "time_ns": int, "attributes": dict}, as the Python reader builds. */
static int read_event(Reader r, PyObject *events) {
    Field f;
    uint32_t seen = 0;
    uint64_t time_ns = 0;
    PyObject *name = NULL, *attributes = PyDict_New(), *event = NULL, *time_obj = NULL;
    int rc = attributes == NULL ? ERROR : OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, EVENT, &f))) break;
        if (f.field == 3) {
            rc = read_key_value(f.body, 0, attributes);
        } else if ((rc = first_time(&seen, f.field)) == OK) {
            if (f.field == 1) time_ns = f.number;
            else if (f.field == 2) rc = read_str(&f.body, &name);
            /* 4: dropped_attributes_count */
        }
    }
    if (rc == OK) {
        if ((name == NULL && (name = PyUnicode_FromStringAndSize("", 0)) == NULL) ||
            (time_obj = PyLong_FromUnsignedLongLong(time_ns)) == NULL ||
            (event = PyDict_New()) == NULL || PyDict_SetItem(event, KEY_NAME, name) ||
            PyDict_SetItem(event, KEY_TIME_NS, time_obj) ||
            PyDict_SetItem(event, KEY_ATTRIBUTES, attributes) || PyList_Append(events, event)) {
            rc = ERROR;
        }
    }
    Py_XDECREF(name);
    Py_XDECREF(attributes);
    Py_XDECREF(event);
    Py_XDECREF(time_obj);
    return rc;
}

/* A message the ingest path does not keep (a link, a scope), checked as the runtime would:
 * singular fields once, strings valid UTF-8, attributes well formed. ``attributes_field`` is
 * its repeated KeyValue field; ``strings`` has bit N set for each string field N; a string
 * field ``keep`` (0: none) is decoded into ``*kept``. */
static int check_message(Reader r, Schema schema, uint32_t attributes_field, uint32_t strings,
                         uint32_t keep, PyObject **kept) {
    Field f;
    uint32_t seen = 0;
    PyObject *attributes = PyDict_New();
    int rc = attributes == NULL ? ERROR : OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, schema, &f))) break;
        if (f.field == attributes_field) rc = read_key_value(f.body, 0, attributes);
        else if ((rc = first_time(&seen, f.field))) break;
        else if (f.field == keep) rc = read_str(&f.body, kept);
        else if (strings & (1u << f.field)) rc = check_str(&f.body);
    }
    Py_XDECREF(attributes);
    return rc;
}

/* Status: code (an open enum, so any int32) and message. */
static int read_status(Reader r, int32_t *code, PyObject **message) {
    Field f;
    uint32_t seen = 0;
    int rc = OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, STATUS, &f)) || (rc = first_time(&seen, f.field))) break;
        if (f.field == 2) rc = read_str(&f.body, message);
        else *code = (int32_t)(uint32_t)f.number;
    }
    return rc;
}

/* Span -> (trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, attributes,
 *          events, status_code, status_message), ids as lower-case hex ("" when absent). */
static int read_span(Reader r, PyObject *spans) {
    Field f;
    uint32_t seen = 0;
    Reader trace_id = {r.p, r.p}, span_id = {r.p, r.p}, parent = {r.p, r.p};
    uint64_t start_ns = 0, end_ns = 0;
    int32_t kind = 0, status_code = 0;
    PyObject *name = NULL, *status_message = NULL, *span = NULL;
    PyObject *trace_hex = NULL, *span_hex = NULL, *parent_hex = NULL;
    PyObject *attributes = PyDict_New(), *events = PyList_New(0);
    int rc = attributes == NULL || events == NULL ? ERROR : OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, SPAN, &f))) break;
        if (f.field == 9) rc = read_key_value(f.body, 0, attributes);
        else if (f.field == 11) rc = read_event(f.body, events);
        else if (f.field == 13) rc = check_message(f.body, LINK, 4, 1u << 3, 0, NULL);
        else if ((rc = first_time(&seen, f.field)) == OK) {
            switch (f.field) {
            case 1: trace_id = f.body; break;
            case 2: span_id = f.body; break;
            case 3: rc = check_str(&f.body); break;  /* trace_state */
            case 4: parent = f.body; break;
            case 5: rc = read_str(&f.body, &name); break;
            case 6: kind = (int32_t)(uint32_t)f.number; break;
            case 7: start_ns = f.number; break;
            case 8: end_ns = f.number; break;
            case 15: rc = read_status(f.body, &status_code, &status_message); break;
            default: break;  /* dropped counts (10, 12, 14) and flags (16) */
            }
        }
    }
    if (rc == OK) {
        if ((name == NULL && (name = PyUnicode_FromStringAndSize("", 0)) == NULL) ||
            (status_message == NULL &&
             (status_message = PyUnicode_FromStringAndSize("", 0)) == NULL) ||
            (trace_hex = hex_str(&trace_id)) == NULL || (span_hex = hex_str(&span_id)) == NULL ||
            (parent_hex = hex_str(&parent)) == NULL) {
            rc = ERROR;
        }
    }
    if (rc == OK) {
        span = Py_BuildValue("(OOOOiKKOOiO)", trace_hex, span_hex, parent_hex, name, kind,
                             (unsigned long long)start_ns, (unsigned long long)end_ns,
                             attributes, events, status_code, status_message);
        if (span == NULL || PyList_Append(spans, span)) rc = ERROR;
    }
    Py_XDECREF(trace_hex);
    Py_XDECREF(span_hex);
    Py_XDECREF(parent_hex);
    Py_XDECREF(name);
    Py_XDECREF(status_message);
    Py_XDECREF(attributes);
    Py_XDECREF(events);
    Py_XDECREF(span);
    return rc;
}

/* ScopeSpans -> (scope name, [span, ...]). */
static int read_scope_spans(Reader r, PyObject *scopes) {
    Field f;
    uint32_t seen = 0;
    PyObject *name = NULL, *spans = PyList_New(0), *scope = NULL;
    int rc = spans == NULL ? ERROR : OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, SCOPE_SPANS, &f))) break;
        if (f.field == 2) rc = read_span(f.body, spans);
        else if ((rc = first_time(&seen, f.field))) break;
        /* InstrumentationScope: its name kept, version and attributes only checked */
        else if (f.field == 1) rc = check_message(f.body, SCOPE, 3, 1u << 2, 1, &name);
        else rc = check_str(&f.body);  /* schema_url */
    }
    if (rc == OK && name == NULL && (name = PyUnicode_FromStringAndSize("", 0)) == NULL) {
        rc = ERROR;
    }
    if (rc == OK &&
        ((scope = PyTuple_Pack(2, name, spans)) == NULL || PyList_Append(scopes, scope))) {
        rc = ERROR;
    }
    Py_XDECREF(name);
    Py_XDECREF(spans);
    Py_XDECREF(scope);
    return rc;
}

/* Resource: its attributes. */
static int read_resource(Reader r, PyObject *attributes) {
    Field f;
    uint32_t seen = 0;
    int rc = OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, RESOURCE, &f))) break;
        if (f.field == 1) rc = read_key_value(f.body, 0, attributes);
        else rc = first_time(&seen, f.field);  /* 2: dropped_attributes_count */
    }
    return rc;
}

/* ResourceSpans -> (resource attributes, [(scope name, [span, ...]), ...]). */
static int read_resource_spans(Reader r, PyObject *out) {
    Field f;
    uint32_t seen = 0;
    PyObject *attributes = PyDict_New(), *scopes = PyList_New(0), *item = NULL;
    int rc = attributes == NULL || scopes == NULL ? ERROR : OK;
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, RESOURCE_SPANS, &f))) break;
        if (f.field == 2) rc = read_scope_spans(f.body, scopes);
        else if ((rc = first_time(&seen, f.field))) break;
        else if (f.field == 1) rc = read_resource(f.body, attributes);
        else rc = check_str(&f.body);  /* schema_url */
    }
    if (rc == OK && ((item = PyTuple_Pack(2, attributes, scopes)) == NULL ||
                     PyList_Append(out, item))) {
        rc = ERROR;
    }
    Py_XDECREF(attributes);
    Py_XDECREF(scopes);
    Py_XDECREF(item);
    return rc;
}

PyDoc_STRVAR(read_request_doc,
"read_request(body, /)\n--\n\n"
"An ExportTraceServiceRequest's spans from protobuf wire bytes, or None when the request is\n"
"not one this reader handles (decode it with the protobuf runtime instead).\n\n"
"Returns [(resource attributes, [(scope name, [span, ...]), ...]), ...] where a span is\n"
"(trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, attributes, events,\n"
"status_code, status_message), ids in lower-case hex and \"\" for an absent id or string.");

static PyObject *read_request(PyObject *module, PyObject *arg) {
    Py_buffer view;
    Field f;
    PyObject *out;
    int rc = OK;
    (void)module;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE)) return NULL;
    Reader r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
    out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    while (rc == OK && r.p < r.end) {
        if ((rc = next_field(&r, LIST, &f)) == OK) rc = read_resource_spans(f.body, out);
    }
    PyBuffer_Release(&view);
    if (rc == OK) return out;
    Py_DECREF(out);
    if (rc == ERROR) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read_request", read_request, METH_O, read_request_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_otlp_wire",
    .m_doc = "OTLP trace requests read from protobuf wire bytes (a fast path; see read_request).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__otlp_wire(void) {
    PyObject *base64 = PyImport_ImportModule("base64");
    if (base64 == NULL) return NULL;
    B64ENCODE = PyObject_GetAttrString(base64, "b64encode");
    Py_DECREF(base64);
    KEY_NAME = PyUnicode_InternFromString("name");
    KEY_TIME_NS = PyUnicode_InternFromString("time_ns");
    KEY_ATTRIBUTES = PyUnicode_InternFromString("attributes");
    if (B64ENCODE == NULL || KEY_NAME == NULL || KEY_TIME_NS == NULL || KEY_ATTRIBUTES == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
