"""SWAA models in lm-evaluation-harness: importing this package registers the ``swaa`` model.

lm-eval 0.4.13 (the newest release) finds external models only once their module is imported,
so ``python -m swaa_patch.lm_eval ARGS`` (or ``swaa-lm-eval ARGS``) imports it and runs lm-eval's
own command line with ARGS unchanged; from Python, ``import swaa_patch.lm_eval`` before
``lm_eval.simple_evaluate(model="swaa", ...)``. lm-eval releases with entry-point discovery (merged
upstream after 0.4.13) find ``swaa`` through the ``lm_eval.models`` entry point in pyproject.toml,
so plain ``lm_eval --model swaa`` works there. Needs ``pip install 'swaa[lmeval]'``.
"""

try:
    from .model import SWAALM
except ImportError as err:  # lm-eval is an optional extra
    if err.name is None or not err.name.startswith("lm_eval"):
        raise
    raise ImportError("swaa_patch.lm_eval needs lm-evaluation-harness: pip install 'swaa[lmeval]'") from err

__all__ = ["SWAALM"]
