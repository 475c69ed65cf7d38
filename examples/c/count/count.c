/*
 * `count` in C: the keyed word count. A value state per word, in host state,
 * holds the count (a JSON number, as the Rust UDF stores it); every update
 * emits `{"word":w,"count":n}`.
 */
#include "keyed_process.h"
#include "sluice.h"

static sluice_state count;
static sluice_buf json;

static const char *open_count(const char *config, size_t len) {
    (void)config;
    (void)len;
    return sluice_state_declare("count", &count) ? NULL : "cannot declare state `count`";
}

static void count_word(uint32_t input, const sluice_record *r, sluice_out *out) {
    (void)input;
    bool ok;
    int64_t n = sluice_value_get_i64(count, 0, &ok) + 1;
    if (!ok || !sluice_value_put_i64(count, n)) {
        sluice_fail(out, "state access failed (see the job's log)");
        return;
    }
    json.len = 0;
    sluice_buf_str(&json, "{\"word\":");
    sluice_buf_json_string(&json, r->key, r->key_len);
    sluice_buf_str(&json, ",\"count\":");
    sluice_buf_i64(&json, n);
    sluice_buf_byte(&json, '}');
    sluice_emit_like(out, r, json.ptr, json.len);
}

SLUICE_EXPORT_KEYED_PROCESS(open_count, count_word, sluice_no_timers)
