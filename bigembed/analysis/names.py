"""Names of clusters from the metadata: the dominant label with its share, the terms most
distinctive of a text column (class-based TF-IDF over scikit-learn's ``CountVectorizer``), or
else the cluster's size and place on the map."""

from __future__ import annotations

import numpy as np

#: metadata columns read as text for naming, first match wins
TEXT_COLUMNS = ("text", "caption", "sentence", "title", "document")
#: texts per cluster fed to the vectoriser (seeded sample): naming cost stays bounded
TEXTS_PER_CLUSTER = 2000
TERMS = 3


def text_column(meta) -> str | None:
    for c in TEXT_COLUMNS:
        if c in meta.columns and (meta[c].dtype == object or str(meta[c].dtype) in
                                  ("string", "str", "large_string")):
            return c
    return None


def ctfidf_terms(texts_per_cluster: list[list[str]], top: int = TERMS) -> list[list[str]]:
    """The ``top`` terms of each cluster most distinctive against the others: class-based
    TF-IDF (each cluster's texts as one document; tf normalised per cluster, idf =
    log(1 + mean words per cluster / the term's count over all clusters))."""
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [" ".join(t) for t in texts_per_cluster]
    if not any(d.strip() for d in docs):
        return [[] for _ in docs]
    cv = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_][^\W\d_]+\b",
                         max_features=100_000)
    try:
        X = cv.fit_transform(docs).astype(np.float64)
    except ValueError:  # only stop words
        return [[] for _ in docs]
    words = np.asarray(X.sum(1)).ravel()
    tf = X.multiply(1.0 / np.maximum(words, 1)[:, None]).tocsr()
    freq = np.asarray(X.sum(0)).ravel()
    avg = X.sum() / max(len(docs), 1)
    idf = np.log(1.0 + avg / np.maximum(freq, 1))
    score = tf.multiply(idf[None, :]).tocsr()
    vocab = cv.get_feature_names_out()
    out = []
    for i in range(score.shape[0]):
        row = score.getrow(i)
        if row.nnz == 0:
            out.append([])
            continue
        order = np.lexsort((row.indices, -row.data))[:top]
        out.append([str(vocab[row.indices[j]]) for j in order])
    return out


def place_word(x: float, y: float, bounds) -> str:
    """Where (x, y) lies in ``bounds`` ((x0, x1), (y0, y1)): "top left", "centre", ..."""
    (x0, x1), (y0, y1) = bounds
    fx = (x - x0) / ((x1 - x0) or 1.0)
    fy = (y - y0) / ((y1 - y0) or 1.0)
    col = "left" if fx < 1 / 3 else ("right" if fx > 2 / 3 else "")
    row = "bottom" if fy < 1 / 3 else ("top" if fy > 2 / 3 else "")
    return " ".join(w for w in (row, col) if w) or "centre"


def human_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    if n >= 1000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def unique_names(names: list[str], places: list[str]) -> list[str]:
    """Names told apart: a name shared by several clusters gets its place, then a number."""
    from collections import Counter

    seen = Counter(names)
    out = [f"{n} · {p}" if seen[n] > 1 and p else n for n, p in zip(names, places)]
    again = Counter(out)
    count: Counter = Counter()
    final = []
    for n in out:
        if again[n] > 1:
            count[n] += 1
            n = f"{n} #{count[n]}"
        final.append(n)
    return final
