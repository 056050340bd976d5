"""Cached teacher distributions for word-level KD: the teacher's top-K per target token, computed once.

store: the on-disk format, the identity guard and the reader (used by the word_kd criterion);
build: the stage CLI (`python -m pipeline.kdcache shard|index|build`).
"""
