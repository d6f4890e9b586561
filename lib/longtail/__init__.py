"""longtail: a PySpark batch recommender that reaches the long tail.

BERT text vectors computed on Spark executors, Delta Lake tables, ALS collaborative filtering fused
with content scores, and long-tail coverage measured next to accuracy.
"""

__version__ = "0.1.0"
