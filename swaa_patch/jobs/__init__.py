"""What every long job (``swaa eval``, ``distill``, ``sft``, ``calibrate``, ``make-data``) shares.

    errors.py          the errors printed as one line (bad input, refusals, Ctrl-C)
    io.py              crash-safe files: atomic writes, durable jsonl appends, torn-line handling
    output.py          one job per output folder (PID lock per process), and only a folder of its kind
    validate.py        typed JSON readers that name the path of a bad field; shared settings helpers
    builtin_models.py  the built-in tiny models (``builtin:NAME``), built offline on first use
    loading.py         model folders: validation, built-in resolution, tokenizer and model loading
    prompts.py         prompts -> token ids exactly as every job tokenises them, batching
    run.py             the resumable, data-parallel run skeleton (rank shards, settings checks)
    make_data.py       ``swaa make-data``: synthetic task files sized for a tokenizer

Layering: the SWAA core < ``data`` < ``jobs`` < ``evaluation`` < ``calibration`` / ``training`` /
``demo`` < ``cli``; nothing here imports a package above it. Light on import: torch,
transformers and accelerate are imported by the functions that need them.
"""
