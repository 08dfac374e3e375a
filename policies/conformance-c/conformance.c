// The conformance policy (docs/conformance.md) in C.
//
// `policy.h` and `policy.c` are generated from wit/ by `wit-bindgen c` at
// build time (scripts/build-lang-policies.sh). Ownership follows the
// generated bindings: arguments of an export belong to the export (it
// frees them), results are freed by the bindings after the host has read
// them, so everything returned is heap-allocated.

#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef wasmvisor_policy_types_exit_kind_t exit_kind_t;
typedef wasmvisor_policy_types_io_exit_t io_exit_t;
typedef wasmvisor_policy_types_mmio_exit_t mmio_exit_t;
typedef wasmvisor_policy_types_msr_exit_t msr_exit_t;
typedef wasmvisor_policy_types_mem_violation_t mem_violation_t;
typedef wasmvisor_policy_types_action_t action_t;
typedef exports_wasmvisor_policy_handler_verdict_t verdict_t;
typedef exports_wasmvisor_policy_handler_subscriptions_t subscriptions_t;

#define READ WASMVISOR_POLICY_TYPES_DIRECTION_READ
#define WRITE WASMVISOR_POLICY_TYPES_DIRECTION_WRITE

enum {
    PORT_COUNT = 0x520,
    PORT_LAST = 0x521,
    PORT_EMIT = 0x522,
    PORT_PEEK = 0x523,
};
#define MSR_VALUE 0x51000000u
#define MSR_NEXT 0x51000001u
#define MMIO_BASE 0xd1000000ull
#define MMIO_LEN 0x1000ull
#define GUARDED_PAGE 0x70000ull
#define DENIED_VALUE 0xbadull
#define DEFAULT_KEY 0x5a5a5a5aull
#define INITIAL_MSR 0x123456789abcdef0ull
#define GP_VECTOR 13

// One instance of the component serves one vCPU, so plain globals are
// per-vCPU state.
static struct {
    uint64_t key;
    uint64_t count;
    uint64_t last;
    uint64_t msr;
    uint64_t addr;
} state;

// A copy of a component string, NUL-terminated for the C string functions.
static char *cstr(const policy_string_t *s) {
    char *out = malloc(s->len + 1);
    memcpy(out, s->ptr, s->len);
    out[s->len] = '\0';
    return out;
}

// a, b and c concatenated into a component string (for error messages).
static void join3(policy_string_t *ret, const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *buf = malloc(la + lb + lc);
    memcpy(buf, a, la);
    memcpy(buf + la, b, lb);
    memcpy(buf + la + lb, c, lc);
    ret->ptr = (uint8_t *)buf;
    ret->len = la + lb + lc;
}

// Decimal or 0x hex; false unless the whole text is digits that fit in
// 32 bits (checked digit by digit, so no overflow can slip through).
static bool parse_u32(const char *text, uint64_t *out) {
    unsigned base = 10;
    if (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        base = 16;
        text += 2;
    }
    if (*text == '\0') return false;
    uint64_t v = 0;
    for (; *text; text++) {
        unsigned d;
        char c = *text;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (base == 16 && c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (base == 16 && c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return false;
        v = v * base + d;
        if (v > 0xffffffffull) return false;
    }
    *out = v;
    return true;
}

// `value & (2^(8*size) - 1)`, without shifting a 64-bit value by 64.
static uint64_t mask(uint8_t size) {
    return size >= 8 ? UINT64_MAX : (1ull << (8 * size)) - 1;
}

// Verdicts. The action list is returned to the host, so it is malloc'd.
static void decline(verdict_t *ret) {
    ret->tag = WASMVISOR_POLICY_TYPES_VERDICT_DECLINE;
}

static action_t *handled(verdict_t *ret) {
    action_t *a = calloc(1, sizeof *a);
    ret->tag = WASMVISOR_POLICY_TYPES_VERDICT_HANDLED;
    ret->val.handled.ptr = a;
    ret->val.handled.len = 1;
    return a;
}

static void resume(verdict_t *ret) {
    handled(ret)->tag = WASMVISOR_POLICY_TYPES_ACTION_RESUME;
}

static void complete(verdict_t *ret, uint64_t value) {
    action_t *a = handled(ret);
    a->tag = WASMVISOR_POLICY_TYPES_ACTION_COMPLETE_READ;
    a->val.complete_read = value;
}

void exports_wasmvisor_policy_handler_info(exports_wasmvisor_policy_handler_policy_info_t *ret) {
    policy_string_dup(&ret->name, "conformance");
    policy_string_dup(&ret->version, "1.0.0");
    policy_string_dup(&ret->description, "conformance policy (C)");
}

// Lists returned inside the subscriptions: one malloc'd element each.
#define ONE(list, ...)                                      \
    do {                                                    \
        (list).len = 1;                                     \
        (list).ptr = malloc(sizeof *(list).ptr);            \
        *(list).ptr = (__typeof__(*(list).ptr))__VA_ARGS__; \
    } while (0)

bool exports_wasmvisor_policy_handler_init(policy_list_tuple2_string_string_t *config,
                                           subscriptions_t *ret, policy_string_t *err) {
    // Unknown keys first, then the value of `key` (the last one wins if it
    // repeats), as the other builds do.
    bool ok = true;
    const policy_string_t *value = NULL;
    for (size_t i = 0; ok && i < config->len; i++) {
        char *k = cstr(&config->ptr[i].f0);
        if (strcmp(k, "key") == 0) {
            value = &config->ptr[i].f1;
        } else {
            join3(err, "unknown config key `", k, "`");
            ok = false;
        }
        free(k);
    }
    uint64_t key = DEFAULT_KEY;
    if (ok && value) {
        char *v = cstr(value);
        if (!parse_u32(v, &key)) {
            join3(err, "config key `key`: `", v, "` is not a 32-bit number");
            ok = false;
        }
        free(v);
    }
    policy_list_tuple2_string_string_free(config);
    if (!ok) return false;

    state.key = key;
    state.count = 0;
    state.last = 0;
    state.msr = INITIAL_MSR;
    state.addr = 0;

    memset(ret, 0, sizeof *ret);
    ONE(ret->ports, {.first = PORT_COUNT, .last = PORT_PEEK});
    ONE(ret->msrs, {.first = MSR_VALUE, .last = MSR_NEXT});
    ONE(ret->mmio, {.base = MMIO_BASE, .len = MMIO_LEN});
    ONE(ret->protect, {.range = {.base = GUARDED_PAGE, .len = 0x1000},
                       .mode = WASMVISOR_POLICY_TYPES_PROTECTION_WRITE_PROTECT});
    ret->events = WASMVISOR_POLICY_TYPES_EVENT_SET_MEM_VIOLATION;
    ret->capabilities = WASMVISOR_POLICY_TYPES_CAPABILITIES_PROTECT_MEMORY;
    return true;
}

// The data of `{"value":V}` for port 0x522, V in decimal.
static void emit_value(uint32_t value) {
    char digits[10], json[32];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    size_t len = 9;
    memcpy(json, "{\"value\":", len);
    while (n) json[len++] = digits[--n];
    json[len++] = '}';

    policy_string_t kind, data = {.ptr = (uint8_t *)json, .len = len};
    policy_string_set(&kind, "conformance");
    wasmvisor_policy_host_emit(&kind, &data);
}

// The 4 little-endian bytes at `addr`, or all-ones if the host refuses.
static uint64_t peek(uint64_t addr) {
    policy_list_u8_t bytes;
    wasmvisor_policy_host_host_error_t e;
    if (!wasmvisor_policy_host_read_phys(addr, 4, &bytes, &e)) return 0xffffffff;
    uint64_t v = 0xffffffff;
    if (bytes.len == 4) {
        v = (uint64_t)bytes.ptr[0] | (uint64_t)bytes.ptr[1] << 8 |
            (uint64_t)bytes.ptr[2] << 16 | (uint64_t)bytes.ptr[3] << 24;
    }
    policy_list_u8_free(&bytes);
    return v;
}

static void on_io(const io_exit_t *io, verdict_t *ret) {
    uint64_t value;
    if (io->direction == WRITE) {
        switch (io->port) {
        case PORT_LAST: state.last = io->data; break;
        case PORT_EMIT: emit_value(io->data); break;
        case PORT_PEEK: state.addr = io->data; break;
        default: decline(ret); return;
        }
        resume(ret);
        return;
    }
    switch (io->port) {
    case PORT_COUNT: value = state.count; break;
    case PORT_LAST: value = state.last ^ state.key; break;
    case PORT_PEEK: value = peek(state.addr); break;
    default: decline(ret); return;
    }
    complete(ret, value & mask(io->size));
}

static void on_msr(const msr_exit_t *msr, verdict_t *ret) {
    if (msr->index == MSR_VALUE && msr->direction == READ) {
        complete(ret, state.msr);
    } else if (msr->index == MSR_VALUE) {
        state.msr = msr->value;
        resume(ret);
    } else if (msr->index == MSR_NEXT && msr->direction == READ) {
        complete(ret, state.msr + 1); // unsigned: wraps at 2^64
    } else if (msr->index == MSR_NEXT) {
        action_t *a = handled(ret);
        a->tag = WASMVISOR_POLICY_TYPES_ACTION_INJECT;
        a->val.inject.vector = GP_VECTOR;
        a->val.inject.error_code.is_some = true;
        a->val.inject.error_code.val = 0;
    } else {
        decline(ret);
    }
}

static void on_mmio(const mmio_exit_t *mmio, verdict_t *ret) {
    if (mmio->gpa < MMIO_BASE || mmio->gpa >= MMIO_BASE + MMIO_LEN) {
        decline(ret);
    } else if (mmio->direction == READ) {
        complete(ret, ((mmio->gpa - MMIO_BASE) * 3) & mask(mmio->size));
    } else {
        resume(ret); // the write is dropped
    }
}

static void on_mem_violation(const mem_violation_t *v, verdict_t *ret) {
    bool denied = v->access == WASMVISOR_POLICY_TYPES_MEM_ACCESS_WRITE &&
                  (v->data & mask(v->size)) == DENIED_VALUE;
    handled(ret)->tag = denied ? WASMVISOR_POLICY_TYPES_ACTION_DENY
                               : WASMVISOR_POLICY_TYPES_ACTION_ALLOW;
}

void exports_wasmvisor_policy_handler_handle_exit(exports_wasmvisor_policy_handler_exit_event_t *event,
                                                  verdict_t *ret) {
    state.count++;
    const exit_kind_t *k = &event->kind;
    switch (k->tag) {
    case WASMVISOR_POLICY_TYPES_EXIT_KIND_IO: on_io(&k->val.io, ret); break;
    case WASMVISOR_POLICY_TYPES_EXIT_KIND_MSR: on_msr(&k->val.msr, ret); break;
    case WASMVISOR_POLICY_TYPES_EXIT_KIND_MMIO: on_mmio(&k->val.mmio, ret); break;
    case WASMVISOR_POLICY_TYPES_EXIT_KIND_MEM_VIOLATION:
        on_mem_violation(&k->val.mem_violation, ret);
        break;
    default: decline(ret); break;
    }
    exports_wasmvisor_policy_handler_exit_event_free(event);
}

void exports_wasmvisor_policy_handler_cpuid(exports_wasmvisor_policy_handler_cpuid_leaf_t *leaf,
                                            exports_wasmvisor_policy_handler_cpuid_leaf_t *ret) {
    *ret = *leaf;
}

void exports_wasmvisor_policy_handler_save_state(policy_list_u8_t *ret) {
    ret->len = 8;
    ret->ptr = malloc(8);
    for (int i = 0; i < 8; i++) ret->ptr[i] = (uint8_t)(state.count >> (8 * i));
}

bool exports_wasmvisor_policy_handler_restore_state(policy_list_u8_t *saved, policy_string_t *err) {
    bool ok = saved->len == 8;
    if (ok) {
        uint64_t count = 0;
        for (int i = 0; i < 8; i++) count |= (uint64_t)saved->ptr[i] << (8 * i);
        state.count = count;
    } else {
        policy_string_dup(err, "conformance: the state must be 8 bytes");
    }
    policy_list_u8_free(saved);
    return ok;
}
