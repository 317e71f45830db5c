"""Speculative decoding's draft model, checked against the repository when a model's config is merged.

``speculative = { draft = "NAME", num_tokens = 4 }`` in a model's config names another model of the
repository that proposes ``num_tokens`` tokens per decoding sequence and step for this model to
verify. ``merge_model_config`` calls ``resolve_draft``, so every plan (``ladle serve``, ``ladle plan``,
a deployment) checks that the draft exists, serves a version, is not the model itself, does not
speculate itself, and shares the model's tokenizer: the ``tokenizer.json`` of each served version of
the model must map every token to the same id as the draft's. Anything else is a ``ConfigError``
naming both models and the file that set ``speculative``.

The draft then reaches the runtime with the model's options, as the option ``speculative``::

    {"draft": "NAME", "version": "V", "artifact": "<the draft version's directory>",
     "num_tokens": 4, "options": {<the draft's own runtime options>}}

A step-able runtime that speculates (``StepRuntime.speculative_tokens``) loads the draft from it
beside the target, on the model's device, with the draft's own options (its dtype, say); nothing else
in the core reads it. The draft keeps serving as a model of its own as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import MODEL_CONFIG_FILE, ModelConfig, ServerConfig, merge_model_config, model_config_sources
from .errors import ConfigError, InvalidRequestError, ModelNotFoundError

__all__ = ["DRAFT_OPTION", "TOKENIZER_FILE", "resolve_draft", "vocabulary"]

#: The runtime option that carries the resolved draft.
DRAFT_OPTION = "speculative"
TOKENIZER_FILE = "tokenizer.json"


def vocabulary(directory: Path) -> dict[str, int] | None:
    """Token -> id of the ``tokenizer.json`` in ``directory`` (added tokens included); ``None``
    without one. Raises ``ConfigError`` for a file that is not a tokenizer."""
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data.get("model") or {}
        entries = model.get("vocab")
        ids: dict[str, int] = {}
        if isinstance(entries, dict):
            ids = {str(token): int(index) for token, index in entries.items()}
        elif isinstance(entries, list):  # Unigram: [token, score] pairs, the id is the position
            ids = {str(entry[0]): index for index, entry in enumerate(entries)}
        for token in data.get("added_tokens") or []:
            ids[str(token["content"])] = int(token["id"])
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a tokenizer file: {exc}", file=str(path)) from None
    return ids


def resolve_draft(
    server: ServerConfig, model: str, config: ModelConfig, model_file: Path | None
) -> ModelConfig:
    """``config`` with its draft checked and handed to the runtime (``options.speculative``)."""
    from .repository import ModelRepository  # the repository module imports the config module

    settings = config.speculative
    if settings is None:
        return config
    root = model_file.parent.parent if model_file is not None else server.repository_path
    source = model_config_sources(server, model, model_file).get("speculative", "the model's config")
    draft = settings.draft

    def refused(message: str) -> ConfigError:
        return ConfigError(
            f"{source}: speculative: {message}", file=source, key="speculative", model=model, draft=draft
        )

    if draft is None:
        raise refused(f"model {model!r} names no draft model (speculative.draft)")
    if draft == model:
        raise refused(f"model {model!r} cannot be its own draft model")
    repository = ModelRepository(root)
    try:
        draft_file = repository.model_dir(draft) / MODEL_CONFIG_FILE
    except (ModelNotFoundError, InvalidRequestError):
        models = repository.models() if root.is_dir() else []
        raise refused(
            f"draft model {draft!r} of model {model!r} is not in the repository; "
            f"its models: {', '.join(models) or 'none'}"
        ) from None
    draft_config = merge_model_config(server, draft, draft_file, with_draft=False)
    if draft_config.speculative is not None:
        raise refused(
            f"draft model {draft!r} of model {model!r} has a speculative table of its own: "
            "a draft model decodes on its own"
        )
    served = draft_config.version_policy.select(repository.versions(draft))
    if not served:
        raise refused(f"draft model {draft!r} of model {model!r} has no version to serve")
    version = served[-1]
    draft_dir = repository.version_dir(draft, version)
    draft_ids = vocabulary(draft_dir)
    if draft_ids is None:
        raise refused(
            f"draft model {draft!r} (version {version}) has no {TOKENIZER_FILE} to compare with "
            f"model {model!r}'s tokenizer"
        )
    if (root / model).is_dir():
        for target_version in config.version_policy.select(repository.versions(model)):
            target_ids = vocabulary(repository.version_dir(model, target_version))
            if target_ids is None:
                raise refused(
                    f"model {model!r} (version {target_version}) has no {TOKENIZER_FILE} to compare "
                    f"with draft model {draft!r}'s tokenizer"
                )
            if target_ids != draft_ids:
                raise refused(
                    f"draft model {draft!r} (version {version}) does not share model {model!r}'s "
                    f"tokenizer (version {target_version}): the same tokens have different ids"
                )
    resolved: dict[str, Any] = {
        "draft": draft,
        "version": version,
        "artifact": str(draft_dir),
        "num_tokens": settings.num_tokens,
        "options": dict(draft_config.options),
    }
    return config.model_copy(update={"options": {**config.options, DRAFT_OPTION: resolved}})
