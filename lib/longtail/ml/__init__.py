"""Models and ranking: the text encoder, ALS and the projection head, blocked top-K, scoring, metrics."""
