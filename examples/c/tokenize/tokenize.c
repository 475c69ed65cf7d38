/*
 * `tokenize` in C: a flat-map from a line of text to one record per word,
 * keyed by the word, with the line's timestamp. A word is a maximal run of
 * ASCII letters and digits, lowercased; bytes of multi-byte UTF-8 characters
 * count as word characters and are kept as they are (the Rust UDF classifies
 * and lowercases every Unicode character; on ASCII text the two agree).
 */
#include "stateless.h"
#include "sluice.h"

static sluice_buf word;

static bool is_word_byte(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

static void tokenize(const sluice_record *r, sluice_out *out) {
    const int64_t *ts = r->has_timestamp ? &r->timestamp : NULL;
    word.len = 0;
    for (size_t i = 0; i <= r->value_len; i++) {
        uint8_t c = i < r->value_len ? r->value[i] : ' ';
        if (is_word_byte(c)) {
            sluice_buf_byte(&word, (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c);
        } else if (word.len) {
            sluice_emit(out, word.ptr, word.len, ts, word.ptr, word.len);
            word.len = 0;
        }
    }
}

SLUICE_EXPORT_STATELESS(sluice_open_any, tokenize)
