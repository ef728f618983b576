"""``python -m swaa_patch.lm_eval ARGS``: lm-eval's command line, with the ``swaa`` model registered.

ARGS are lm-eval's, unchanged, e.g. ``run --model swaa --model_args pretrained=demo/model,
sliding_window_size=64,keep_first=4 --tasks swaa_demo --include_path eval/lm_eval
--apply_chat_template``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Register ``swaa`` with lm-eval, then run lm-eval's CLI on ``argv`` (default: sys.argv[1:])."""
    from lm_eval.__main__ import cli_evaluate

    from . import SWAALM  # noqa: F401  (registers the model)

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # lm-eval's parser reads sys.argv itself
    cli_evaluate()


if __name__ == "__main__":
    main()
