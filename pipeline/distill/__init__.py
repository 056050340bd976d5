"""Sequence-level distillation (Kim & Rush 2016): the teacher beam-decodes the training source.

Stages, each a CLI run by pipeline/rules/distill.smk:
    python -m pipeline.distill.decode_shard   one shard of the training source -> n-best JSONL
    python -m pipeline.distill.assemble       shards -> distilled corpus (by id), selection, filters, stats
    python -m pipeline.distill.binarize       distilled corpus -> fairseq data with the teacher's dictionary
"""
