/* OTLP trace requests read straight from protobuf wire bytes into Python objects.
 *
 * The protobuf runtime builds a message object for every attribute of every span, and reading
 * each field builds another; at tens of thousands of spans a second that is most of a core.
 * This reader walks the bytes once and builds only what the ingest path keeps.
 *
 * It is a fast path, never the judge: it handles the shape OpenTelemetry exporters send and
 * answers "not mine" (None) for anything else (a field it does not know, a wire type other than
 * the schema's, a singular field given twice, nesting past 32 levels, invalid UTF-8, a
 * truncated body), and the caller then parses the request with the protobuf
 * runtime, which gives the authoritative answer and the error message. So for every input it
 * either agrees with the runtime or steps aside. Every read is bounds-checked against the end
 * of its enclosing message.
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
    uint64_t varint;       /* WT_VARINT, WT_FIXED64 and WT_FIXED32 values */
    Reader body;           /* WT_LEN contents */
} Field;

static PyObject *KEY_NAME, *KEY_TIME_NS, *KEY_ATTRIBUTES;

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

/* The next field of a message, or NOT_MINE for a wire type the schema never uses here. */
static int next_field(Reader *r, Field *f) {
    uint64_t tag, length;
    if (read_varint(r, &tag)) return NOT_MINE;
    if (tag >> 3 == 0 || tag >> 3 > UINT32_MAX) return NOT_MINE;
    f->field = (uint32_t)(tag >> 3);
    f->wire_type = (uint32_t)(tag & 7);
    switch (f->wire_type) {
    case WT_VARINT:
        return read_varint(r, &f->varint);
    case WT_FIXED64:
        if (r->end - r->p < 8) return NOT_MINE;
        f->varint = 0;
        for (int i = 7; i >= 0; i--) f->varint = (f->varint << 8) | r->p[i];
        r->p += 8;
        return OK;
    case WT_FIXED32:
        if (r->end - r->p < 4) return NOT_MINE;
        f->varint = (uint64_t)r->p[0] | (uint64_t)r->p[1] << 8 | (uint64_t)r->p[2] << 16 |
                    (uint64_t)r->p[3] << 24;
        r->p += 4;
        return OK;
    case WT_LEN:
        if (read_varint(r, &length)) return NOT_MINE;
        if (length > (uint64_t)(r->end - r->p)) return NOT_MINE;
        f->body.p = r->p;
        f->body.end = r->p + length;
        r->p += length;
        return OK;
    default:  /* groups */
        return NOT_MINE;
    }
}

/* A singular field may appear once; the runtime would merge or overwrite a second one. */
static int first_time(uint32_t *seen, uint32_t field) {
    uint32_t bit = 1u << field;
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

/* A bytes attribute value as the Python reader gives it: standard base64 text, padded. */
static PyObject *base64_str(const Reader *body) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    Py_ssize_t size = body->end - body->p;
    const uint8_t *in = body->p;
    PyObject *text = PyUnicode_New((size + 2) / 3 * 4, 127);
    if (text == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t i = 0;
    for (; i + 3 <= size; i += 3, out += 4) {
        uint32_t group = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[0] = (Py_UCS1)alphabet[group >> 18];
        out[1] = (Py_UCS1)alphabet[group >> 12 & 63];
        out[2] = (Py_UCS1)alphabet[group >> 6 & 63];
        out[3] = (Py_UCS1)alphabet[group & 63];
    }
    if (i < size) {
        uint32_t group = (uint32_t)in[i] << 16 | (i + 1 < size ? (uint32_t)in[i + 1] << 8 : 0);
        out[0] = (Py_UCS1)alphabet[group >> 18];
        out[1] = (Py_UCS1)alphabet[group >> 12 & 63];
        out[2] = (Py_UCS1)(i + 1 < size ? alphabet[group >> 6 & 63] : '=');
        out[3] = '=';
    }
    return text;
}

static int read_key_value(Reader r, int depth, PyObject *into);

/* An AnyValue as Python: the set member of its oneof, None when none is. */
static int read_any_value(Reader r, int depth, PyObject **out) {
    Field f;
    uint32_t seen = 0;
    PyObject *value = NULL, *item = NULL;
    int rc = OK;
    if (depth > MAX_DEPTH) return NOT_MINE;
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) goto fail;
        if (seen) { rc = NOT_MINE; goto fail; }  /* one member of the oneof, once */
        seen = 1;
        switch (f.field) {
        case 1:  /* string_value */
            if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto fail; }
            if ((rc = read_str(&f.body, &value))) goto fail;
            break;
        case 2:  /* bool_value */
            if (f.wire_type != WT_VARINT) { rc = NOT_MINE; goto fail; }
            value = PyBool_FromLong(f.varint != 0);
            break;
        case 3:  /* int_value */
            if (f.wire_type != WT_VARINT) { rc = NOT_MINE; goto fail; }
            value = PyLong_FromLongLong((long long)(int64_t)f.varint);
            if (value == NULL) { rc = ERROR; goto fail; }
            break;
        case 4: {  /* double_value */
            double number;
            if (f.wire_type != WT_FIXED64) { rc = NOT_MINE; goto fail; }
            memcpy(&number, &f.varint, sizeof number);
            value = PyFloat_FromDouble(number);
            if (value == NULL) { rc = ERROR; goto fail; }
            break;
        }
        case 5: {  /* array_value: ArrayValue { repeated AnyValue values = 1; } */
            Field g;
            if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto fail; }
            if ((value = PyList_New(0)) == NULL) { rc = ERROR; goto fail; }
            while (f.body.p < f.body.end) {
                if ((rc = next_field(&f.body, &g))) goto fail;
                if (g.field != 1 || g.wire_type != WT_LEN) { rc = NOT_MINE; goto fail; }
                if ((rc = read_any_value(g.body, depth + 1, &item))) goto fail;
                if (PyList_Append(value, item)) { rc = ERROR; goto fail; }
                Py_CLEAR(item);
            }
            break;
        }
        case 6: {  /* kvlist_value: KeyValueList { repeated KeyValue values = 1; } */
            Field g;
            if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto fail; }
            if ((value = PyDict_New()) == NULL) { rc = ERROR; goto fail; }
            while (f.body.p < f.body.end) {
                if ((rc = next_field(&f.body, &g))) goto fail;
                if (g.field != 1 || g.wire_type != WT_LEN) { rc = NOT_MINE; goto fail; }
                if ((rc = read_key_value(g.body, depth + 1, value))) goto fail;
            }
            break;
        }
        case 7:  /* bytes_value */
            if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto fail; }
            if ((value = base64_str(&f.body)) == NULL) { rc = ERROR; goto fail; }
            break;
        default:  /* string_value_strindex (profiles only), or unknown */
            rc = NOT_MINE;
            goto fail;
        }
    }
    if (value == NULL) value = Py_NewRef(Py_None);
    *out = value;
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
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) goto done;
        if ((rc = first_time(&seen, f.field < 3 ? f.field : 3))) goto done;
        if (f.field == 1 && f.wire_type == WT_LEN) {
            if ((rc = read_str(&f.body, &key))) goto done;
        } else if (f.field == 2 && f.wire_type == WT_LEN) {
            if ((rc = read_any_value(f.body, depth, &value))) goto done;
        } else {
            rc = NOT_MINE;  /* key_strindex, or the wrong wire type */
            goto done;
        }
    }
    if (key == NULL && (key = PyUnicode_FromStringAndSize("", 0)) == NULL) { rc = ERROR; goto done; }
    if (value == NULL) value = Py_NewRef(Py_None);
    if (PyDict_SetItem(into, key, value)) rc = ERROR;
done:
    Py_XDECREF(key);
    Py_XDECREF(value);
    return rc;
}

/* A length-delimited field holding one KeyValue of a repeated ``attributes`` field. */
static int add_attribute(const Field *f, PyObject *into) {
    if (f->wire_type != WT_LEN) return NOT_MINE;
    return read_key_value(f->body, 0, into);
}

static int skip_varint(const Field *f) { return f->wire_type == WT_VARINT ? OK : NOT_MINE; }

/* Span.Event -> {"name": str, "time_ns": int, "attributes": dict}, as the Python reader builds. */
static int read_event(Reader r, PyObject *events) {
    Field f;
    uint32_t seen = 0;
    uint64_t time_ns = 0;
    PyObject *name = NULL, *attributes = PyDict_New(), *event = NULL, *time_obj = NULL;
    int rc = OK;
    if (attributes == NULL) return ERROR;
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) goto done;
        if (f.field == 3) {
            if ((rc = add_attribute(&f, attributes))) goto done;
            continue;
        }
        if ((rc = first_time(&seen, f.field < 5 ? f.field : 5))) goto done;
        if (f.field == 1 && f.wire_type == WT_FIXED64) {
            time_ns = f.varint;
        } else if (f.field == 2 && f.wire_type == WT_LEN) {
            if ((rc = read_str(&f.body, &name))) goto done;
        } else if (f.field == 4) {
            if ((rc = skip_varint(&f))) goto done;
        } else {
            rc = NOT_MINE;
            goto done;
        }
    }
    if (name == NULL && (name = PyUnicode_FromStringAndSize("", 0)) == NULL) { rc = ERROR; goto done; }
    if ((time_obj = PyLong_FromUnsignedLongLong(time_ns)) == NULL) { rc = ERROR; goto done; }
    if ((event = PyDict_New()) == NULL || PyDict_SetItem(event, KEY_NAME, name) ||
        PyDict_SetItem(event, KEY_TIME_NS, time_obj) ||
        PyDict_SetItem(event, KEY_ATTRIBUTES, attributes) || PyList_Append(events, event)) {
        rc = ERROR;
    }
done:
    Py_XDECREF(name);
    Py_XDECREF(attributes);
    Py_XDECREF(event);
    Py_XDECREF(time_obj);
    return rc;
}

/* Span.Link: the ingest path keeps no links, but the runtime would refuse a malformed one. */
static int check_link(Reader r) {
    Field f;
    uint32_t seen = 0;
    PyObject *attributes = PyDict_New();
    int rc = OK;
    if (attributes == NULL) return ERROR;
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) break;
        if (f.field == 4) {
            if ((rc = add_attribute(&f, attributes))) break;
            continue;
        }
        if ((rc = first_time(&seen, f.field < 7 ? f.field : 7))) break;
        if ((f.field == 1 || f.field == 2) && f.wire_type == WT_LEN) continue;
        if (f.field == 3 && f.wire_type == WT_LEN) {
            if ((rc = check_str(&f.body))) break;
        } else if (f.field == 5) {
            if ((rc = skip_varint(&f))) break;
        } else if (!(f.field == 6 && f.wire_type == WT_FIXED32)) {
            rc = NOT_MINE;
            break;
        }
    }
    Py_DECREF(attributes);
    return rc;
}

/* Status: code (an open enum, so any int32) and message. */
static int read_status(Reader r, int32_t *code, PyObject **message) {
    Field f;
    uint32_t seen = 0;
    int rc;
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) return rc;
        if ((rc = first_time(&seen, f.field < 4 ? f.field : 4))) return rc;
        if (f.field == 2 && f.wire_type == WT_LEN) {
            if ((rc = read_str(&f.body, message))) return rc;
        } else if (f.field == 3 && f.wire_type == WT_VARINT) {
            *code = (int32_t)(uint32_t)f.varint;
        } else {
            return NOT_MINE;
        }
    }
    return OK;
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
    int rc = OK;
    if (attributes == NULL || events == NULL) { rc = ERROR; goto done; }
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) goto done;
        switch (f.field) {
        case 9:
            if ((rc = add_attribute(&f, attributes))) goto done;
            continue;
        case 11:
            if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto done; }
            if ((rc = read_event(f.body, events))) goto done;
            continue;
        case 13:
            if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto done; }
            if ((rc = check_link(f.body))) goto done;
            continue;
        }
        if ((rc = first_time(&seen, f.field < 17 ? f.field : 17))) goto done;
        switch (f.field) {
        case 1: case 2: case 4: case 3: case 5: case 15:
            if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto done; }
            if (f.field == 1) trace_id = f.body;
            else if (f.field == 2) span_id = f.body;
            else if (f.field == 4) parent = f.body;
            else if (f.field == 3) rc = check_str(&f.body);  /* trace_state */
            else if (f.field == 5) rc = read_str(&f.body, &name);
            else rc = read_status(f.body, &status_code, &status_message);
            if (rc) goto done;
            break;
        case 6:
            if (f.wire_type != WT_VARINT) { rc = NOT_MINE; goto done; }
            kind = (int32_t)(uint32_t)f.varint;
            break;
        case 7: case 8:
            if (f.wire_type != WT_FIXED64) { rc = NOT_MINE; goto done; }
            if (f.field == 7) start_ns = f.varint;
            else end_ns = f.varint;
            break;
        case 10: case 12: case 14:  /* dropped counts */
            if ((rc = skip_varint(&f))) goto done;
            break;
        case 16:  /* flags */
            if (f.wire_type != WT_FIXED32) { rc = NOT_MINE; goto done; }
            break;
        default:
            rc = NOT_MINE;
            goto done;
        }
    }
    if (name == NULL && (name = PyUnicode_FromStringAndSize("", 0)) == NULL) { rc = ERROR; goto done; }
    if (status_message == NULL && (status_message = PyUnicode_FromStringAndSize("", 0)) == NULL) {
        rc = ERROR;
        goto done;
    }
    if ((trace_hex = hex_str(&trace_id)) == NULL || (span_hex = hex_str(&span_id)) == NULL ||
        (parent_hex = hex_str(&parent)) == NULL) {
        rc = ERROR;
        goto done;
    }
    span = Py_BuildValue("(OOOOiKKOOiO)", trace_hex, span_hex, parent_hex, name, kind,
                         (unsigned long long)start_ns, (unsigned long long)end_ns, attributes,
                         events, status_code, status_message);
    if (span == NULL || PyList_Append(spans, span)) rc = ERROR;
done:
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

/* InstrumentationScope: its name is kept; version and attributes are only checked. */
static int read_scope(Reader r, PyObject **name) {
    Field f;
    uint32_t seen = 0;
    PyObject *attributes = PyDict_New();
    int rc = OK;
    if (attributes == NULL) return ERROR;
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) break;
        if (f.field == 3) {
            if ((rc = add_attribute(&f, attributes))) break;
            continue;
        }
        if ((rc = first_time(&seen, f.field < 5 ? f.field : 5))) break;
        if (f.field == 1 && f.wire_type == WT_LEN) {
            if ((rc = read_str(&f.body, name))) break;
        } else if (f.field == 2 && f.wire_type == WT_LEN) {
            if ((rc = check_str(&f.body))) break;
        } else if (f.field == 4) {
            if ((rc = skip_varint(&f))) break;
        } else {
            rc = NOT_MINE;
            break;
        }
    }
    Py_DECREF(attributes);
    return rc;
}

/* ScopeSpans -> (scope name, [span, ...]). */
static int read_scope_spans(Reader r, PyObject *scopes) {
    Field f;
    uint32_t seen = 0;
    PyObject *name = NULL, *spans = PyList_New(0), *scope = NULL;
    int rc = OK;
    if (spans == NULL) return ERROR;
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) goto done;
        if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto done; }
        if (f.field == 2) {
            if ((rc = read_span(f.body, spans))) goto done;
            continue;
        }
        if ((rc = first_time(&seen, f.field < 4 ? f.field : 4))) goto done;
        if (f.field == 1) rc = read_scope(f.body, &name);
        else if (f.field == 3) rc = check_str(&f.body);  /* schema_url */
        else rc = NOT_MINE;
        if (rc) goto done;
    }
    if (name == NULL && (name = PyUnicode_FromStringAndSize("", 0)) == NULL) { rc = ERROR; goto done; }
    scope = PyTuple_Pack(2, name, spans);
    if (scope == NULL || PyList_Append(scopes, scope)) rc = ERROR;
done:
    Py_XDECREF(name);
    Py_XDECREF(spans);
    Py_XDECREF(scope);
    return rc;
}

/* Resource: its attributes (entity references are left to the runtime). */
static int read_resource(Reader r, PyObject *attributes) {
    Field f;
    uint32_t seen = 0;
    int rc;
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) return rc;
        if (f.field == 1) {
            if ((rc = add_attribute(&f, attributes))) return rc;
        } else if (f.field == 2) {
            if ((rc = first_time(&seen, 2)) || (rc = skip_varint(&f))) return rc;
        } else {
            return NOT_MINE;
        }
    }
    return OK;
}

/* ResourceSpans -> (resource attributes, [(scope name, [span, ...]), ...]). */
static int read_resource_spans(Reader r, PyObject *out) {
    Field f;
    uint32_t seen = 0;
    PyObject *attributes = PyDict_New(), *scopes = PyList_New(0), *item = NULL;
    int rc = OK;
    if (attributes == NULL || scopes == NULL) { rc = ERROR; goto done; }
    while (r.p < r.end) {
        if ((rc = next_field(&r, &f))) goto done;
        if (f.wire_type != WT_LEN) { rc = NOT_MINE; goto done; }
        if (f.field == 2) {
            if ((rc = read_scope_spans(f.body, scopes))) goto done;
            continue;
        }
        if ((rc = first_time(&seen, f.field < 4 ? f.field : 4))) goto done;
        if (f.field == 1) rc = read_resource(f.body, attributes);
        else if (f.field == 3) rc = check_str(&f.body);  /* schema_url */
        else rc = NOT_MINE;
        if (rc) goto done;
    }
    item = PyTuple_Pack(2, attributes, scopes);
    if (item == NULL || PyList_Append(out, item)) rc = ERROR;
done:
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
        rc = next_field(&r, &f);
        if (rc == OK && (f.field != 1 || f.wire_type != WT_LEN)) rc = NOT_MINE;
        if (rc == OK) rc = read_resource_spans(f.body, out);
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
    KEY_NAME = PyUnicode_InternFromString("name");
    KEY_TIME_NS = PyUnicode_InternFromString("time_ns");
    KEY_ATTRIBUTES = PyUnicode_InternFromString("attributes");
    if (KEY_NAME == NULL || KEY_TIME_NS == NULL || KEY_ATTRIBUTES == NULL) return NULL;
    return PyModule_Create(&module_def);
}
