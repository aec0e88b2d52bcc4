"""Built-in models for demos and benchmarks (torch is imported only when one is used).

* :mod:`bigembed.models.digits` — a small CNN trained in seconds on scikit-learn's digits, with
  augmentation that makes any number of instances (``build_digits_dataset``).
* :mod:`bigembed.models.vit` — a ViT-B/16-shaped transformer from ``torch.nn`` with random
  weights, for throughput benchmarks.
"""
