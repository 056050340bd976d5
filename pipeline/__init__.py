"""Sequence-level knowledge distillation for NMT on fairseq: stage code behind the Snakefile."""
