"""A checkpoint's tokenizer: ``tokenizer.json`` (``tokenizers`` library), special tokens, chat template.

The chat template comes from ``chat_template.jinja`` or ``tokenizer_config.json``'s ``chat_template``
and is rendered with jinja2 in a sandbox, as transformers does. Without one, ``DEFAULT_CHAT_TEMPLATE``
applies: each message on its own line as ``role: content``, then ``assistant:`` when a generation
prompt is asked for; the tokenizer adds its own special tokens (a BOS, say) when that text is encoded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from ladle import ChatMessage, ConfigError, IncrementalDecoder, InvalidRequestError, MissingDependencyError

__all__ = ["DEFAULT_CHAT_TEMPLATE", "DEFAULT_GENERATION_PROMPT", "CheckpointTokenizer"]

#: The fallback chat format, one line per message, then the generation prompt.
DEFAULT_CHAT_TEMPLATE = "{role}: {content}\n"
DEFAULT_GENERATION_PROMPT = "assistant:"
_CONTEXT_TOKENS = 4  # prompt tokens fed to a new incremental decoder, so a leading space decodes right


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _ids(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}", file=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object", file=str(path))
    return data


def _message_text(message: ChatMessage, index: int) -> tuple[str, str]:
    if not isinstance(message, Mapping):
        raise InvalidRequestError(f"messages[{index}] must be an object", param="messages")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidRequestError(f"messages[{index}].role must be a non-empty string", param="messages")
    content = message.get("content")
    if content is None:
        return role, ""
    if isinstance(content, str):
        return role, content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise InvalidRequestError(
                    f"messages[{index}].content: only text parts are supported", param="messages"
                )
            parts.append(part["text"])
        return role, "".join(parts)
    raise InvalidRequestError(
        f"messages[{index}].content must be a string or a list of parts", param="messages"
    )


class _Decoder:
    __slots__ = ("_stream", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        try:
            self._stream = DecodeStream(ids=list(context), skip_special_tokens=True)
        except TypeError:  # tokenizers without prefill support
            self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str | None:
        result: str | None = self._stream.step(self._tokenizer, token_id)
        return result


class CheckpointTokenizer:
    """Implements ``ladle.generation.TextTokenizer`` for a checkpoint directory."""

    def __init__(self, directory: Path, *, extra_eos: Sequence[int] = ()) -> None:
        path = directory / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises its own exception type
            raise ConfigError(f"{path}: cannot load tokenizer: {exc}", file=str(path)) from None
        config = _read_json(directory / "tokenizer_config.json")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.special_tokens = {
            key: text
            for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")
            if (text := _token_text(config.get(key))) is not None
        }
        eos = set(extra_eos)
        if self.eos_token is not None and (token := self._tokenizer.token_to_id(self.eos_token)) is not None:
            eos.add(token)
        generation = _read_json(directory / "generation_config.json")
        eos.update(_ids(generation.get("eos_token_id")))
        self._eos = frozenset(eos)
        self._render: Callable[..., str] | None = None
        self.chat_template = self._find_template(directory, config)
        self._vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def _find_template(directory: Path, config: Mapping[str, Any]) -> str | None:
        separate = directory / "chat_template.jinja"
        if separate.is_file():
            return separate.read_text(encoding="utf-8")
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default")
        return template if isinstance(template, str) and template else None

    # TextTokenizer ---------------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def library_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tokenizer

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        text: str = self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return text

    def decoder(self, context: Sequence[int] = ()) -> IncrementalDecoder:
        """An incremental decoder; ``context`` (the prompt) sets how the first new token decodes."""
        return _Decoder(self._tokenizer, context[-_CONTEXT_TOKENS:])

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise InvalidRequestError("messages must be a non-empty list", param="messages")
        normalised = []
        for index, message in enumerate(messages):
            role, content = _message_text(message, index)
            normalised.append({**message, "role": role, "content": content})
        if self.chat_template is None:
            lines = [DEFAULT_CHAT_TEMPLATE.format(role=m["role"], content=m["content"]) for m in normalised]
            if add_generation_prompt:
                lines.append(DEFAULT_GENERATION_PROMPT)
            return "".join(lines)
        render = self._render or self._compile(self.chat_template)
        try:
            return render(
                messages=normalised,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
                **variables,
            )
        except InvalidRequestError:
            raise
        except Exception as exc:  # a template error is about the messages it was given
            raise InvalidRequestError(
                f"the chat template refused the messages: {exc}", param="messages"
            ) from None

    def encode_chat(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True, **variables: Any
    ) -> list[int]:
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **variables)
        # A checkpoint's template writes its own special tokens (transformers encodes it without adding any).
        return self.encode(text, add_special_tokens=self.chat_template is None)

    def _compile(self, source: str) -> Callable[..., str]:
        try:
            from jinja2 import TemplateError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise MissingDependencyError(
                "this checkpoint has a chat template; rendering it needs jinja2: pip install 'ladle[llm]'",
                missing=["jinja2"],
                extra="llm",
            ) from None

        def raise_exception(message: str) -> None:
            raise InvalidRequestError(f"the chat template refused the messages: {message}", param="messages")

        def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
            return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

        def strftime_now(format: str) -> str:
            return datetime.now().strftime(format)

        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        environment.filters["tojson"] = tojson
        environment.globals["raise_exception"] = raise_exception
        environment.globals["strftime_now"] = strftime_now
        try:
            template = environment.from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"the checkpoint's chat template does not compile: {exc}") from None
        self._render = template.render
        return template.render
