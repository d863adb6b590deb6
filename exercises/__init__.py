"""The exercises, one module each; cachelab finds them by convention (``_`` skips one)."""
