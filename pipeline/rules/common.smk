# What every stage file shares, included first by the Snakefile: config accessors and checks, every
# work/ and results/ path, the model roster, and the command-line flags of each decoding job, built
# once here from the config. The stage files (data, teacher, distill, students, evaluate, report,
# export; ct2 for the CTranslate2 conversion) read only what is defined here, never each other, so
# they may be included in any order.
#
# Values: config/config.yaml holds every setting's default (the schema only checks), so the rules
# read config keys directly and restate no default.
#
# Precedence of decoding settings: a job decodes with its stage's search settings (distill.* for the
# distillation shards; evaluate.* for the evaluation and the export). A CTranslate2 job (distill.backend
# ctranslate2, evaluate.backends' ctranslate2, the export) takes its batch from ct2.max_tokens and
# ct2.batch_size, each key separately, where it is set (not null), and from the stage's own
# max_tokens / batch_size otherwise; compute type, threads and shortlist come from ct2.* alone.

import json
import re
import shlex
import sys

from pipeline.ct2 import COMPUTE_TYPES as CT2_COMPUTE_TYPES
from pipeline.distill.shards import shard_name
from pipeline.errors import ConfigError
from pipeline.models import ENSEMBLE, TEACHER, model_records
from pipeline.settings import stage_layout
from pipeline.teachers import CHECKPOINTS, CT2, check_ct2_teacher, check_external_teacher, teacher_kind
from pipeline.spm import DEFAULT_MAX_POSITIONS, max_pieces_for

# ---------------------------------------------------------------------------------------------------
# Config accessors

SRC, TGT = config["src"], config["tgt"]
LANGS = [SRC, TGT]
SPLITS = ["train", "dev", "test"]
FAIRSEQ_SPLIT = {"train": "train", "dev": "valid", "test": "test"}  # fairseq's names for our splits
DATA_CFG = config["data"]
STUDENTS_CFG = config["students"]
DISTILL_CFG = config["distill"]
EVAL_CFG = config["evaluate"]
CT2_CFG = config["ct2"]
REPORT_CFG = config["report"]


def res(stage):
    """Compute per job of a stage (config resources.<stage>: threads, mem_mb, runtime and, where a job may use one, gpus)."""
    return config["resources"][stage]


# Stage CLIs run with this interpreter (the .venv's), importing this repository's packages.
PY = sys.executable
REPO = workflow.basedir
# (shell.prefix is formatted like a command: the doubled braces survive as shell syntax)
shell.prefix("set -euo pipefail; export PYTHONPATH=" + REPO + "${{PYTHONPATH:+:$PYTHONPATH}}; ")

# ---------------------------------------------------------------------------------------------------
# Paths. Every stage's outputs live in a directory keyed by the settings that made them
# (pipeline.settings: a readable name plus a hash, settings.json beside the outputs), so experiments
# (config `experiment`) share whatever their settings share; results/<experiment>/ holds one
# experiment's evaluations, training records, TensorBoard links and report.

TEACHER_KIND = teacher_kind(config)  # first: refuses a config with two kinds of teacher
LAYOUT = stage_layout(config)
MODELS = LAYOUT.specs
EXPERIMENT = config["experiment"]
RESULTS = LAYOUT.results_dir  # results/<experiment>
DATA_DIR = LAYOUT.data_dir  # work/data/<src>-<tgt>-<key>
RAW_DIR = DATA_DIR + "/raw"
RAW = RAW_DIR + "/{split}.{lang}"  # as fetched (the references of the evaluation)
NORM = DATA_DIR + "/norm/{split}.{lang}"  # punctuation-normalised
CLEAN_TEXT = DATA_DIR + "/clean/train.{lang}"  # the cleaned training corpus
SPM_PREFIX = DATA_DIR + "/spm/spm"
SPM_MODEL = SPM_PREFIX + ".model"
SPM_TEXT_PREFIX = DATA_DIR + "/spm/"
SPM_TEXT = SPM_TEXT_PREFIX + "{split}.{lang}"  # spm-encoded splits (train: the cleaned corpus)
DATA_SETTINGS = DATA_DIR + "/settings.json"  # what the key of each keyed directory hashes (rule stage_settings)
BIN_DIR = DATA_DIR + "/bin"  # the reference data, binarised with the joint dictionary
CLEAN_STATS = DATA_DIR + "/clean_stats.json"
CLEAN_IDS = DATA_DIR + "/clean/train.ids"
DISTILL_DIR = LAYOUT.distill_dir  # work/distill/<selection>_beam<N>-<key>
DISTILL_TEXT_PREFIX = DISTILL_DIR + "/train"
DISTILL_TEXT = DISTILL_TEXT_PREFIX + ".{lang}"  # the distilled corpus, spm-encoded
DISTILL_IDS = DISTILL_TEXT_PREFIX + ".ids"
DISTILL_PLAIN = DISTILL_TEXT_PREFIX + ".{lang}.txt"  # the distilled corpus as text
DISTILL_BIN = LAYOUT.distill_bin  # the distilled training set beside the real dev and test sets (bin+ref/: mixed)
DISTILL_STATS = DISTILL_DIR + "/stats.json"
DISTILL_SETTINGS = DISTILL_DIR + "/settings.json"
# Logs and benchmark files of keyed stages sit under the stage's directory name (evaluations: the
# experiment's), so that a run with other settings never overwrites them.
DATA_RUN = LAYOUT.data.dir
DISTILL_RUN = LAYOUT.distill.dir

# Models: work/models/<name>-<key> ({mdir}: the directory's name; MODEL_NAMES maps it back to the roster's
# name, which the evaluations and the report use). model_path(MODEL, name) is one model's file.
MODEL_DIRS = {name: stage.dir for name, stage in LAYOUT.models.items()}
MODEL_NAMES = {mdir: name for name, mdir in MODEL_DIRS.items()}
MODEL_DIR = "work/models/{mdir}"
MODEL = MODEL_DIR + "/model.pt"
MODEL_SPEC = MODEL_DIR + "/spec.json"  # the model's settings (pipeline.models.model_records), copied into its evaluations
MODEL_SPM = MODEL_DIR + "/spm.model"  # beside model.pt, so that `pipeline.translate --model` needs nothing else
MODEL_METRICS = MODEL_DIR + "/train.jsonl"  # fairseq's progress records of a model's training
MODEL_TB = MODEL_DIR + "/tb"  # its TensorBoard logs (linked from results/<experiment>/tb/<name>)
MODEL_SETTINGS = MODEL_DIR + "/settings.json"


def model_path(template, name):
    """A model's file: template (MODEL, MODEL_SPEC, ...) in the model's keyed directory."""
    return template.format(mdir=MODEL_DIRS[name])


def dir_pattern(names, dirs):
    """Wildcard constraint: the keyed directories of these names only."""
    return "|".join(re.escape(dirs[name]) for name in names) or "(?!)"


CT2_DIRS = {name: stage.dir for name, stage in LAYOUT.ct2.items()}
CT2_NAMES = {cdir: name for name, cdir in CT2_DIRS.items()}
CT2_DIR = "work/ct2/{cdir}"  # a converted model (float32), with its spm.model and pipeline.json
CT2_MODEL = CT2_DIR + "/model.bin"
# the vocabulary shortlist (pipeline.vmap) from the training corpus, per shortlist setting
VMAP = DATA_DIR + "/vmap-{frequent}-{per_source}.txt".format(**CT2_CFG["vmap"])
CT2_VMAP = VMAP if CT2_CFG["vmap"]["enabled"] else None  # the shortlist every CTranslate2 job uses, if any
TRAIN_METRICS = RESULTS + "/train/{model}.jsonl"  # a copy of each trained model's progress records
TB_LINK = RESULTS + "/tb/{model}"  # a link to each trained model's TensorBoard logs: `tensorboard --logdir results/<experiment>/tb`
EVAL_DIR = RESULTS + "/eval/{model}"
EVAL_JSON = EVAL_DIR + "/{evalset}.json"
EVAL_BEAM = EVAL_DIR + "/{evalset}.beam.txt"  # the beam hypotheses the report's paired bootstrap resamples
EVAL_CT2_JSON = EVAL_DIR + "/{evalset}.ct2-{compute_type}.json"
SPEEDUP_JSON = EVAL_DIR + "/{evalset}.speedup-{backend}.json"  # a student timed beside its teacher (rule speedup_vs_teacher)
SUMMARY_CSV = RESULTS + "/summary.csv"  # the report's table of every model on every set (rule report_summary)
PLOTS_DIR = RESULTS + "/plots"


def ct2_path(template, name):
    return template.format(cdir=CT2_DIRS[name])


def dict_files(bin_dir):
    return [f"{bin_dir}/dict.{lang}.txt" for lang in LANGS]


def split_files(bin_dir, split, exts=("bin", "idx")):
    """fairseq's files of one of our splits (train, dev, test) in a binarised data directory."""
    return [f"{bin_dir}/{FAIRSEQ_SPLIT[split]}.{SRC}-{TGT}.{lang}.{ext}" for lang in LANGS for ext in exts]


def bin_files(bin_dir):
    """Everything a binarised data directory holds: dictionaries, then every split."""
    return dict_files(bin_dir) + [path for split in SPLITS for path in split_files(bin_dir, split)]


# Distillation shards: the checkpoint distill_shard_index plans ceil(lines / distill.shard_size) shards
# of the cleaned corpus (byte offsets of each in DISTILL_INDEX). Shard ids are zero-padded (at least 3
# digits) and the shard count is part of every shard's file name, so that shards made for another count
# are never taken for finished ones. ({nshards}: Snakemake reserves the wildcard name `count`.)
# The index depends on the cleaned corpus and the shard size only: it lives in the data stage's directory,
# so that a new distillation (another beam, another teacher) plans its shards without a new index.
DISTILL_INDEX = DATA_DIR + f"/distill_index-{DISTILL_CFG['shard_size']}.json"
DISTILL_SHARD = DISTILL_DIR + "/shards/shard{shard}-of-{nshards}.jsonl"  # the teacher's n-best lists
DISTILL_PART = DISTILL_DIR + "/post/shard{shard}-of-{nshards}"  # the shard post-processed (a directory)
DISTILL_SHARD_CONSTRAINTS = {"shard": r"\d\d\d+", "nshards": r"\d\d\d+"}  # (a {3,} here would match nothing)


def distill_shard_count():
    """The shard count of the index: known once the checkpoint distill_shard_index has run."""
    with open(checkpoints.distill_shard_index.get().output[0]) as f:
        return json.load(f)["shards"]


def distill_parts(wildcards):
    """Every shard's post-processed directory, in shard order (the merge's input)."""
    count = distill_shard_count()
    return [DISTILL_PART.format(shard=shard_name(k, count), nshards=shard_name(count, count)) for k in range(count)]


# Teacher caches (pipeline.kdcache): the teacher's top-K per target token of a word-KD student's training
# data, one cache per data directory (reference: the data stage's bin, distilled: the distillation's), each
# split (fairseq's train and valid) in students.kd_cache_shards shard directories, then cache.json. The
# cache's directory is keyed ({kdir}: work/kdcache/<targets>-<key>; KDCACHE_TARGETS maps it back).
KD_CACHE = STUDENTS_CFG["kd_cache"]  # the teacher's distributions (an ensemble's average: students at T = 1 only)
KDCACHE_SHARDS = STUDENTS_CFG["kd_cache_shards"]
KDCACHE_ID_WIDTH = max(3, len(str(KDCACHE_SHARDS - 1)))
KDCACHE_SHARD_IDS = [f"{i:0{KDCACHE_ID_WIDTH}d}" for i in range(KDCACHE_SHARDS)]
KDCACHE_SPLITS = ["train", "valid"]  # fairseq's names: the criterion reads train in training, valid in validation
KDCACHE_DIRS = {targets: stage.dir for targets, stage in LAYOUT.kdcache.items()}
KDCACHE_TARGETS = {kdir: targets for targets, kdir in KDCACHE_DIRS.items()}
KDCACHE_DIR = "work/kdcache/{kdir}"
KDCACHE_SHARD = KDCACHE_DIR + f"/{{split}}/shard{{shard}}-of-{KDCACHE_SHARDS:0{KDCACHE_ID_WIDTH}d}"  # a directory
KDCACHE_INDEX = KDCACHE_DIR + "/cache.json"

# ---------------------------------------------------------------------------------------------------
# Model roster: the teacher, then one student per variant (x alpha x temperature for word-KD) and per
# seed of students.seeds (names end in _s<seed> only when there are several; spec.json records it)

STUDENTS = [name for name in MODELS if MODELS[name].variant != TEACHER]
MODEL_PATTERN = "|".join(re.escape(name) for name in MODELS)  # wildcard constraint: only models of the roster
MODEL_DIR_PATTERN = dir_pattern(MODELS, MODEL_DIRS)  # the same for their keyed directories
# Distillation is planned (in `all`) only when a student trains on distilled targets (seq_kd, seq_word_kd).
USES_DISTILLATION = any(MODELS[name].targets == "distilled" for name in STUDENTS)

# ---------------------------------------------------------------------------------------------------
# Teachers (pipeline.teachers; docs/config.md "teacher"). TEACHER_KIND:
#   trained:     teacher.ensemble teachers of ours (teacher, teacher_2, ...), differing in seed only;
#   checkpoints: teacher.checkpoints, imported (linked) as teacher, teacher_2, ... instead of trained; the
#                data stage takes their SentencePiece model and dictionary (checked here, before any job);
#   ct2:         teacher.ct2_model, a text-to-text CTranslate2 teacher that only decodes the training set;
#                no fairseq teacher in the roster, the students get the data stage's own spm and dictionary.
# Several teachers are an ensemble: the distillation decodes with all of them (fairseq), word-KD
# students learn from all of them, the evaluation has every member plus the ENSEMBLE entry.

TEACHERS = [name for name in MODELS if MODELS[name].variant == TEACHER]  # members, in order
TEACHER_MODELS = [model_path(MODEL, name) for name in TEACHERS]
TEACHER_PATHS = ":".join(TEACHER_MODELS)  # fairseq's ensemble syntax: decode_shard --model, word_kd --teacher-path
IS_ENSEMBLE = len(TEACHERS) > 1
EXTERNAL = check_external_teacher(config) if TEACHER_KIND == CHECKPOINTS else None
IMPORTED = {name: str(path.resolve()) for name, path in zip(TEACHERS, EXTERNAL.checkpoints)} if EXTERNAL else {}
TRAINED = [name for name in MODELS if name not in IMPORTED]
TRAINED_DIR_PATTERN = dir_pattern(TRAINED, MODEL_DIRS)
CT2_TEACHER = check_ct2_teacher(config, [name for name in STUDENTS if MODELS[name].uses_teacher]) if TEACHER_KIND == CT2 else None
if IS_ENSEMBLE and DISTILL_CFG["backend"] == "ctranslate2" and USES_DISTILLATION:
    raise ConfigError(f"config distill.backend: ctranslate2 cannot decode an ensemble ({len(TEACHERS)} teachers: "
                      f"{', '.join(TEACHERS)}); set distill.backend: fairseq (it averages the members' probabilities)")
if TEACHER_KIND == CT2 and DISTILL_CFG["backend"] != "ctranslate2":
    raise ConfigError(f"config distill.backend: {DISTILL_CFG['backend']}, but teacher.ct2_model is a CTranslate2 "
                      "model: set distill.backend: ctranslate2")
# what a student's spec.json names as its teacher
STUDENTS_TEACHER = str(CT2_TEACHER) if CT2_TEACHER else (ENSEMBLE if IS_ENSEMBLE else TEACHER)
ENSEMBLE_EVALUATED = [ENSEMBLE] if IS_ENSEMBLE else []  # the ensemble's evaluation entry (rule evaluate_ensemble)


def train_data_dir(name):
    """The binarised data a model trains on: the distilled corpus or the references."""
    return DISTILL_BIN if MODELS[name].targets == "distilled" else BIN_DIR


def kdcache_dir(name):
    """The teacher cache a model trains with (word-KD students when students.kd_cache is on; with an ensemble
    only at T = 1, else its KL runs online), else None."""
    cache = LAYOUT.student_kdcache(name)
    return KDCACHE_DIR.format(kdir=cache.dir) if cache else None


def model_targets(names):
    """What a trained model is: model.pt, spec.json, spm.model and settings.json (the teacher and students
    targets)."""
    return [model_path(path, name) for name in names for path in (MODEL, MODEL_SPEC, MODEL_SPM, MODEL_SETTINGS)]


MODEL_RECORDS = model_records(MODELS, src=SRC, tgt=TGT, spm=SPM_MODEL, data_dir=train_data_dir, teacher=STUDENTS_TEACHER)
for _name, _path in IMPORTED.items():
    MODEL_RECORDS[_name].update(checkpoint=_path, preset=None, seed=None, train_data=None)  # not trained here
if IS_ENSEMBLE:
    MODEL_RECORDS[ENSEMBLE] = {**MODEL_RECORDS[TEACHER], "name": ENSEMBLE, "variant": ENSEMBLE, "seed": None,
                               "members": TEACHERS}
    if IMPORTED:
        MODEL_RECORDS[ENSEMBLE]["checkpoint"] = ":".join(IMPORTED.values())
RECORD_DIR_PATTERN = dir_pattern(MODEL_RECORDS, MODEL_DIRS)  # models with spec.json and spm.model

# ---------------------------------------------------------------------------------------------------
# Evaluation sets and what the report summarises

# Pieces per dev/test line that every model takes (fairseq's positions minus EOS; no preset changes them).
EVAL_MAX_PIECES = max_pieces_for(DEFAULT_MAX_POSITIONS)
EVAL_BUILTIN = ("dev", "test")  # the data stage's splits; extra sets are raw text of the user's
EVAL_EXTRA = EVAL_CFG["extra_sets"]
EVAL_SETS = list(EVAL_CFG["sets"]) + [name for name in EVAL_EXTRA if name not in EVAL_BUILTIN and name not in EVAL_CFG["sets"]]
EVAL_SET_PATTERN = "|".join(re.escape(name) for name in EVAL_SETS)
EVAL_CT2 = "ctranslate2" in EVAL_CFG["backends"]  # fairseq is always evaluated: the report's figures
EVAL_CT2_TYPES = CT2_CFG["evaluate_compute_types"]
SUMMARY_SET = REPORT_CFG["set"]
# Side-by-side speed-ups (rule speedup_vs_teacher): every student and the teacher (an ensemble's first member,
# the teacher row of the report) in one job per backend, on report.set; none without a fairseq teacher
SPEEDUP_ROUNDS = EVAL_CFG["speedup_rounds"]
SPEEDUP_BACKENDS = ["fairseq"] + ([f"ct2-{ctype}" for ctype in EVAL_CT2_TYPES] if EVAL_CT2 else [])
SPEEDUP_STUDENTS = STUDENTS if SPEEDUP_ROUNDS and TEACHER in MODELS else []
# per experiment: two experiments may name different models alike (a student of other settings)
EXPORT_DIR = "export/" + EXPERIMENT + "/{model}"
EXPORT_MODELS = CT2_CFG["export"]["models"] if CT2_CFG["export"]["models"] is not None else STUDENTS


def eval_outputs(models, sets=None):
    """The evaluation JSON of each model on each set (default: every evaluated set)."""
    return [EVAL_JSON.format(model=model, evalset=name) for model in models for name in (sets or EVAL_SETS)]


def speedup_outputs(models):
    """The side-by-side speed-up JSON of each of these students per backend, on report.set (none when off)."""
    return [SPEEDUP_JSON.format(model=model, evalset=SUMMARY_SET, backend=backend)
            for model in models if model in SPEEDUP_STUDENTS for backend in SPEEDUP_BACKENDS]


def eval_references(sets=None):
    """The raw reference of each evaluation set (built-in: the data stage's; extra: the user's file)."""
    return [RAW.format(split=name, lang=TGT) if name in EVAL_BUILTIN else EVAL_EXTRA[name]["ref"]
            for name in (sets or EVAL_SETS)]


def eval_ct2_outputs(models, sets=None):
    """CTranslate2's evaluation JSON per model, set and compute type; none unless evaluate.backends has ctranslate2."""
    if not EVAL_CT2:
        return []
    return [
        EVAL_CT2_JSON.format(model=model, evalset=name, compute_type=ctype)
        for model in models
        for name in (sets or EVAL_SETS)
        for ctype in EVAL_CT2_TYPES
    ]


# ---------------------------------------------------------------------------------------------------
# Config checks the schema cannot express (each names its keys)

if SRC == TGT:
    raise ConfigError(f"config src and tgt: both are '{SRC}'; the source and target languages must differ")
for _name in EVAL_CFG["sets"]:
    if _name not in EVAL_BUILTIN and _name not in EVAL_EXTRA:
        raise ConfigError(f"config evaluate.sets: unknown set '{_name}' (built-in: dev, test; or define it in evaluate.extra_sets)")
if not EVAL_SETS:
    raise ConfigError("config evaluate.sets: empty, and evaluate.extra_sets defines none: nothing to evaluate or report "
                      "(e.g. sets: [dev, test])")
if SUMMARY_SET not in EVAL_SETS:
    raise ConfigError(f"config report.set: '{SUMMARY_SET}' is not evaluated (evaluate.sets and extra_sets give: "
                      f"{', '.join(EVAL_SETS)}); add it to evaluate.sets or set report.set to one of them")
if SPEEDUP_STUDENTS and SUMMARY_SET not in EVAL_BUILTIN:
    raise ConfigError(f"config evaluate.speedup_rounds: {SPEEDUP_ROUNDS} times the students beside the teacher on report.set, "
                      f"but '{SUMMARY_SET}' is an extra set (its source is raw text); set report.set to dev or test, or "
                      "evaluate.speedup_rounds: 0")
if DISTILL_CFG["nbest"] > DISTILL_CFG["beam"]:
    raise ConfigError(f"config distill.nbest ({DISTILL_CFG['nbest']}) must not exceed distill.beam ({DISTILL_CFG['beam']})")
if DISTILL_CFG["max_tokens"] is None and DISTILL_CFG["batch_size"] is None:
    raise ConfigError("config distill: set max_tokens or batch_size (or both)")
if KD_CACHE and not IS_ENSEMBLE and STUDENTS_CFG["kd_topk"] == 0 and any(MODELS[name].uses_teacher for name in STUDENTS):
    raise ConfigError("config students.kd_cache: true needs students.kd_topk > 0 (the cache holds the teacher's top-K "
                      "tokens); for the full-vocabulary KL (kd_topk: 0) set students.kd_cache: false (the teacher runs online)")
if DATA_CFG["source"] == "files":
    for _split in SPLITS:
        if _split not in DATA_CFG["files"]:
            raise ConfigError(f"config data.files.{_split}: missing (source 'files' needs train, dev and test)")
for _name in EXPORT_MODELS:
    if _name not in MODELS:
        raise ConfigError(f"config ct2.export.models: unknown model '{_name}' (models: {', '.join(MODELS)})")

# ---------------------------------------------------------------------------------------------------
# Decoding flags, built once per kind of job (flag names: the stage CLIs')


def flags(*pairs):
    """'--name value' per pair; a True value gives the bare flag, None or False leaves the flag out."""
    out = []
    for name, value in pairs:
        if value is True:
            out.append(name)
        elif value is not None and value is not False:
            out.append(f"{name} {value}")
    return " ".join(out)


def search_flags(cfg, nbest=False):
    return flags(("--beam", cfg["beam"]), ("--nbest", cfg["nbest"] if nbest else None), ("--lenpen", cfg["lenpen"]),
                 ("--max-len-a", cfg["max_len_a"]), ("--max-len-b", cfg["max_len_b"]))


def batch_flags(cfg):
    return flags(("--max-tokens", cfg["max_tokens"]), ("--batch-size", cfg["batch_size"]))


def ct2_batch_flags(cfg):
    """The precedence rule above: ct2.max_tokens / ct2.batch_size where set, else the stage's own."""
    pick = {key: CT2_CFG[key] if CT2_CFG[key] is not None else cfg[key] for key in ("max_tokens", "batch_size")}
    return batch_flags(pick)


# one compute type per device (the job's device is known only when it runs)
CT2_COMPUTE_TYPE_FLAG = "--compute-type " + ",".join(f"{device}={CT2_CFG['compute_type'][device]}" for device in ("cpu", "cuda"))
CT2_THREAD_FLAGS = flags(("--inter-threads", CT2_CFG["inter_threads"]), ("--intra-threads", CT2_CFG["intra_threads"]))
CT2_VMAP_FILE_FLAG = flags(("--vmap", CT2_VMAP))  # the conversion's and the export's option: the shortlist file
CT2_VMAP_FLAG = flags(("--vmap", CT2_VMAP is not None))  # a decoding job's: use the converted model's shortlist
NORMALIZE_FLAG = flags(("--no-normalize", not DATA_CFG["normalize_punctuation"]))  # raw text into the model


def join(*parts):
    return " ".join(part for part in parts if part)


SPEED_RUNS_FLAG = flags(("--speed-runs", EVAL_CFG["speed_runs"]))
# pipeline.evaluate with fairseq (rule evaluate_model)
EVAL_FLAGS = join(search_flags(EVAL_CFG), batch_flags(EVAL_CFG), flags(("--fp16", EVAL_CFG["fp16"])), SPEED_RUNS_FLAG)
# pipeline.evaluate with CTranslate2 (rule evaluate_model_ct2; the compute type is the job's wildcard)
EVAL_CT2_FLAGS = join(search_flags(EVAL_CFG), CT2_VMAP_FLAG, CT2_THREAD_FLAGS, ct2_batch_flags(EVAL_CFG), SPEED_RUNS_FLAG)
# pipeline.export: the evaluation's search on the test set, CTranslate2's batch; the shortlist as a file
EXPORT_FLAGS = join(search_flags(EVAL_CFG), CT2_COMPUTE_TYPE_FLAG, CT2_THREAD_FLAGS, ct2_batch_flags(EVAL_CFG),
                    SPEED_RUNS_FLAG, CT2_VMAP_FILE_FLAG)
# pipeline.distill.decode_shard with either backend
DISTILL_CT2 = DISTILL_CFG["backend"] == "ctranslate2"
if CT2_TEACHER:  # text in, text out: its own spm in, the students' spm out (no shortlist: the directory has none)
    DISTILL_FLAGS = join(search_flags(DISTILL_CFG, nbest=True),
                         f"--backend ctranslate2 --ct2-model {shlex.quote(str(CT2_TEACHER))} --text-teacher",
                         f"--src {SRC} --tgt {TGT}", CT2_COMPUTE_TYPE_FLAG, CT2_THREAD_FLAGS, ct2_batch_flags(DISTILL_CFG))
elif DISTILL_CT2:
    DISTILL_FLAGS = join(search_flags(DISTILL_CFG, nbest=True), flags(("--fp16", DISTILL_CFG["fp16"])),
                         f"--backend ctranslate2 --ct2-model {ct2_path(CT2_DIR, TEACHER)}", CT2_COMPUTE_TYPE_FLAG,
                         CT2_VMAP_FLAG, CT2_THREAD_FLAGS, ct2_batch_flags(DISTILL_CFG))
else:
    DISTILL_FLAGS = join(search_flags(DISTILL_CFG, nbest=True), batch_flags(DISTILL_CFG),
                         flags(("--fp16", DISTILL_CFG["fp16"])))

# ---------------------------------------------------------------------------------------------------
# settings.json of every keyed directory (rule stage_settings): path -> what it records

KDCACHE_SETTINGS = KDCACHE_DIR + "/settings.json"
CT2_SETTINGS = CT2_DIR + "/settings.json"
SETTINGS_RECORDS = {
    DATA_SETTINGS: LAYOUT.data.record(),
    DISTILL_SETTINGS: LAYOUT.distill.record(),
    **{model_path(MODEL_SETTINGS, name): stage.record() for name, stage in LAYOUT.models.items()},
    **{KDCACHE_SETTINGS.format(kdir=stage.dir): stage.record() for stage in LAYOUT.kdcache.values()},
    **{ct2_path(CT2_SETTINGS, name): stage.record() for name, stage in LAYOUT.ct2.items()},
}


def kdcache_settings(names):
    """settings.json of the teacher caches these models train with."""
    return sorted({KDCACHE_SETTINGS.format(kdir=LAYOUT.student_kdcache(name).dir)
                   for name in names if LAYOUT.student_kdcache(name)})
