"""Decoding with either backend (fairseq, CTranslate2) behind one interface.

    from pipeline.decoding import SearchOptions, add_decoding_args, backend_from_args, open_backend

Modules, one job each: options (SearchOptions, add_decoding_args: the flags and defaults, once),
batching (batch settings, each backend's default batch, fairseq's batching), device (the device
policy), results (Hypothesis, DecodeStats, Decoded), backend (the Backend interface, open_backend),
fairseq_model (loading a checkpoint), fairseq_backend, ct2_backend (decoding, with fairseq's score
convention), compute (CTranslate2 compute types and threads), ct2_dir (a converted directory),
convert (fairseq checkpoint -> CTranslate2; `python -m pipeline.ct2 convert`).

Importing this package imports neither torch nor CTranslate2.
"""

from pipeline.decoding.backend import Backend, backend_from_args, open_backend
from pipeline.decoding.batching import BatchSettings
from pipeline.decoding.options import BACKENDS, SearchOptions, add_decoding_args
from pipeline.decoding.results import Decoded, DecodeStats, Hypothesis

__all__ = [
    "BACKENDS", "Backend", "BatchSettings", "Decoded", "DecodeStats", "Hypothesis", "SearchOptions",
    "add_decoding_args", "backend_from_args", "open_backend",
]
