"""`tokenize` in Python: a flat-map from a line of text to one record per word,
keyed by the word (the same words as the Rust UDF: maximal runs of
alphanumeric characters, lowercased)."""

import sluice


class Tokenize(sluice.FlatMap):
    def flat_map(self, record, out):
        word = []
        for c in record.value_str() + " ":
            if c.isalnum():
                word.append(c.lower())
            elif word:
                w = "".join(word).encode()
                out.emit(w, w, record.timestamp)
                word = []


StatelessOperator = sluice.export_flat_map(Tokenize)
