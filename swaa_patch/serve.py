"""``swaa serve MODEL --swaa-config FILE.json [transformers serve options]``: an OpenAI-compatible server.

transformers ships the server (``transformers serve``: FastAPI + uvicorn, ``/v1/chat/completions``
and friends) and its continuous-batching engine; SWAA adds nothing to either but itself. The
launcher patches transformers (``hack_hf_swaa``), checks the SWAA config against the model's config
before anything loads, and runs transformers' own ``serve`` command with the remaining options,
``--continuous-batching`` on unless the options say otherwise. When the server loads MODEL (it
preloads it: MODEL is ``serve``'s forced model), the config is attached to it with ``apply_swaa``.

Needs the server's packages: ``pip install 'swaa[serve]'`` (transformers' ``serving`` extra).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import SWAAConfig
from .jobs.errors import SettingsError
from .jobs.validate import load_json_file, parse_swaa_config
from .patch import apply_swaa, hack_hf_swaa, validated_config

logger = logging.getLogger(__name__)

INSTALL_HINT = "`swaa serve` needs transformers' server packages: pip install 'swaa[serve]'"
CB_FLAGS = ("--continuous-batching", "--no-continuous-batching")


def load_swaa_config(path: str | Path) -> SWAAConfig | None:
    """The SWAAConfig of a JSON file (``null``: the model unchanged); errors name the file and field."""
    data, resolved = load_json_file(path)
    return parse_swaa_config(data, f"{resolved}: swaa_config")


def check_against_model(model: str, config: SWAAConfig | None) -> None:
    """Refuse a config the model cannot take (family, layer indices) before the server starts."""
    from transformers import AutoConfig

    try:
        validated_config(AutoConfig.from_pretrained(model), config)
    except ValueError as err:
        raise SettingsError(f"--swaa-config: {err}") from None


def serve_argv(model: str, options: Sequence[str]) -> list[str]:
    """``transformers serve`` arguments: MODEL forced, continuous batching on unless said otherwise."""
    said = any(option.split("=")[0] in CB_FLAGS for option in options)
    return ["serve", model, *([] if said else ["--continuous-batching"]), *options]


def same_model(loaded: str, model: str) -> bool:
    """Whether the server's model id is MODEL: ``org/name@revision``, or a local path (kept as given
    by recent releases, given ``@main`` by 5.17)."""
    names = {loaded, loaded.rpartition("@")[0]} - {""}
    if os.path.exists(model):
        return any(os.path.exists(name) and Path(name).resolve() == Path(model).resolve() for name in names)
    return loaded.split("@")[0] == model.split("@")[0]


@contextmanager
def swaa_on_load(model: str, config: SWAAConfig | None) -> Iterator[None]:
    """While the block runs, the server's model manager attaches ``config`` to MODEL when it loads it."""
    from transformers.cli.serving.model_manager import ModelManager

    original: Callable = ModelManager._load_model

    def _load_model(self: Any, model_id_and_revision: str, *args: Any, **kwargs: Any) -> Any:
        if not same_model(model_id_and_revision, model):  # never serve another model without SWAA
            raise SettingsError(f"swaa serve {model}: the server was asked to load {model_id_and_revision}")
        loaded = original(self, model_id_and_revision, *args, **kwargs)
        apply_swaa(loaded, config)
        logger.info("serving %s with %s", model_id_and_revision, config)
        return loaded

    ModelManager._load_model = _load_model
    try:
        yield
    finally:
        ModelManager._load_model = original


def serve(model: str, swaa_config: str | Path, options: Sequence[str] = ()) -> int:
    """Run transformers' server on MODEL with the SWAA config of a JSON file; returns when it stops."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise SettingsError(INSTALL_HINT)
    config = load_swaa_config(swaa_config)
    check_against_model(model, config)
    hack_hf_swaa()
    import click
    from transformers.cli.transformers import app

    with swaa_on_load(model, config):
        try:
            app(args=serve_argv(model, options), prog_name="swaa serve", standalone_mode=False)
        except click.ClickException as err:  # bad transformers serve options
            raise SettingsError(f"transformers serve: {err.format_message()}") from None
    return 0
