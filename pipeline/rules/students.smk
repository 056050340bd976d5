# Students stage: one student per variant of students.variants (word-KD variants once per alpha x
# temperature), each trained by rule train_model (teacher.smk) with its spec.json and spm.model.
# Word-KD students need the teacher's checkpoint; seq-KD students the distilled corpus (distill.smk).
# students.variants: [] plans no student, and then no distillation either.


rule students:
    input:
        model_targets(STUDENTS),
        kdcache_settings(STUDENTS),
