"""``swaa calibrate``: choose a model's full-attention layers (``non_sliding_layers``) from data.

Each layer's sensitivity to sliding is measured teacher-forced on calibration prompts (KL to full
attention, or the increase of answer-token NLL, when that layer alone slides); the full layers are
then chosen greedily under a budget, re-scoring every candidate after each pick.
"""

from .settings import CalibrationSettings, load_calibration_settings, parse_calibration

__all__ = ["CalibrationSettings", "load_calibration_settings", "parse_calibration", "run_calibration"]


def __getattr__(name: str):
    # the runner pulls in torch and transformers: import it on first use only.
    if name == "run_calibration":
        from .run import run_calibration

        return run_calibration
    raise AttributeError(name)
