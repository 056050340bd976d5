"""Named Transformer sizes: fairseq-train architecture options for teachers and students.

Parameter counts are unique parameters with shared embeddings; the embeddings scale with the joint
SentencePiece vocabulary (data.spm.vocab_size).
"""

from __future__ import annotations


def _transformer(layers: tuple[int, int], dim: int, ffn: int, heads: int, dropout: float,
                 prenorm: bool = False) -> list[str]:
    """prenorm: layer normalisation before each sublayer (fairseq's default, and the paper's, is after)."""
    enc, dec = layers
    return [
        "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", str(enc), "--decoder-layers", str(dec),
        "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
        "--encoder-ffn-embed-dim", str(ffn), "--decoder-ffn-embed-dim", str(ffn),
        "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
        "--dropout", str(dropout),
        *(["--encoder-normalize-before", "--decoder-normalize-before"] if prenorm else []),
    ]


PRESETS: dict[str, list[str]] = {
    # Teacher for the 2-core CPU demo: 3+3 layers, d=256 (6.6M parameters with a 4k vocabulary, 7.6M with 8k).
    "teacher_cpu": _transformer((3, 3), 256, 1024, 4, 0.1),
    # The same with pre-norm layers, as the default students have them (docs/results.md: teacher_prenorm2k).
    "teacher_cpu_prenorm": _transformer((3, 3), 256, 1024, 4, 0.1, prenorm=True),
    # GPU-scale teacher comparable to fairseq's transformer_iwslt_de_en: 6+6, d=512, ffn 1024.
    "teacher_iwslt": _transformer((6, 6), 512, 1024, 4, 0.3),
    # Small student: narrow embeddings and output projection, where the cost is (design notes).
    "student_small": _transformer((3, 3), 128, 512, 4, 0.1),
    # Deep encoder, shallow decoder: decoding cost is in the decoder's sequential steps (2.0M with 4k).
    "student_deep_shallow": _transformer((6, 1), 128, 512, 4, 0.1),
    # The same with pre-norm layers: on the distilled data it learns faster and further in the same 14 epochs, and
    # settings that stalled the post-norm students do not stall it (docs/results.md: prenorm).
    "student_deep_shallow_prenorm": _transformer((6, 1), 128, 512, 4, 0.1, prenorm=True),
    # The same with two more encoder layers (2.4M with 4k): capacity where beam search does not pay per step.
    "student_deep8_shallow": _transformer((8, 1), 128, 512, 4, 0.1),
    # The same with pre-norm layers: the post-norm one stalled after a fast start (docs/results.md: deep8, prenorm_deep8).
    "student_deep8_shallow_prenorm": _transformer((8, 1), 128, 512, 4, 0.1, prenorm=True),
    # GPU-scale student (transformer_iwslt-like, half width).
    "student_gpu": _transformer((6, 2), 256, 1024, 4, 0.1),
    # Tests and the smoke run: a few thousand parameters plus embeddings.
    "tiny": _transformer((1, 1), 32, 64, 2, 0.1),
}


def preset_args(name: str) -> list[str]:
    if name not in PRESETS:
        raise KeyError(f"unknown architecture preset '{name}' (known: {', '.join(sorted(PRESETS))})")
    return list(PRESETS[name])
