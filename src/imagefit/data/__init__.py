"""The input pipeline: scan, split, decode, cache, load, augment."""
