"""Sequence-level distillation (Kim & Rush 2016): the teacher beam-decodes the training source.

Stages, each a CLI run by pipeline/rules/distill.smk:
    python -m pipeline.distill.shard_index    cleaned corpus -> shard count (distill.shard_size) and byte offsets
    python -m pipeline.distill.decode_shard   one shard of the training source -> n-best JSONL
    python -m pipeline.distill.postprocess    one shard -> its selected, filtered pairs and summable statistics
    python -m pipeline.distill.merge          all shards' parts -> distilled corpus (in id order) and stats
    python -m pipeline.distill.binarize       distilled corpus -> fairseq data with the teacher's dictionary
    python -m pipeline.distill.assemble       (the whole-corpus implementation postprocess + merge replace)
"""
