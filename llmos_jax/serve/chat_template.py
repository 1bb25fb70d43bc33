"""Chat messages -> prompt token ids, through the model's Jinja chat template.

The template comes from the tokenizer's directory, where Hugging Face keeps it: `chat_template` in
tokenizer_config.json (a string, or a list of named templates: "default" is used), else a
chat_template.jinja file. It is rendered the way transformers' `apply_chat_template` renders it
(a sandboxed Jinja environment with trim_blocks and lstrip_blocks; `raise_exception`, a `tojson`
that does not escape HTML, `strftime_now`; the special tokens as `bos_token`, `eos_token`, ...),
and the text is tokenized with no special tokens added: the template writes the ones it wants.

Models without a template (every llmos run: they are pretrained on plain text) get
DEFAULT_CHAT_TEMPLATE, a plain transcript

    System: You are terse.
    User: Hi there
    Assistant: Hello!
    User: What is a for statement?
    Assistant:

after a BOS token (as `llmos generate` starts its prompts), with DEFAULT_STOP ending the reply
when the model starts writing the user's next turn.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from etils import epath

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ("\nUser:",)
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (the template raised, or a message is malformed)."""


def _compile(source: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def _token_string(value) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def find_template(directory: str | None) -> str | None:
    """The Jinja chat template stored in a tokenizer directory, or None."""
    if not directory:
        return None
    d = epath.Path(directory)
    if not d.is_dir():  # a tokenizer file: its directory holds the rest
        d = d.parent
    config_file = d / "tokenizer_config.json"
    if config_file.exists():
        template = json.loads(config_file.read_text()).get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template:
            return template
    jinja_file = d / "chat_template.jinja"
    return jinja_file.read_text() if jinja_file.exists() else None


class ChatTemplate:
    """Renders and tokenizes conversations for one tokenizer."""

    def __init__(self, tokenizer, source: str | None = None, directory: str | None = None):
        self.tokenizer = tokenizer
        self.is_default = source is None
        self.source = DEFAULT_CHAT_TEMPLATE if source is None else source
        self.default_stop = DEFAULT_STOP if self.is_default else ()
        self._template = _compile(self.source)
        self.special_tokens = self._special_tokens(directory)
        # Special-token text written by a template must map to its id. tokenizer.json tokenizers
        # do that themselves (and splitting their input would change how Metaspace ones begin
        # each piece); plain SentencePiece would spell "<s>" out piece by piece: split for those.
        ids = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id}
        self._special_ids = {
            self.special_tokens[k]: v
            for k, v in ids.items()
            if self.special_tokens.get(k) and tokenizer.encode(self.special_tokens[k]) != [v]
        }

    @classmethod
    def for_tokenizer(cls, tokenizer, directory: str | None) -> ChatTemplate:
        """The template found in `directory` (see `find_template`), else the default."""
        return cls(tokenizer, find_template(directory), directory)

    def _special_tokens(self, directory: str | None) -> dict[str, str]:
        found: dict[str, str] = {}
        if directory:
            d = epath.Path(directory)
            d = d if d.is_dir() else d.parent
            for name in ("tokenizer_config.json", "special_tokens_map.json"):
                if (d / name).exists():
                    cfg = json.loads((d / name).read_text())
                    for key in _SPECIAL_NAMES:
                        value = _token_string(cfg.get(key))
                        if value is not None:
                            found.setdefault(key, value)
        piece = getattr(self.tokenizer, "id_to_piece", None)
        if piece is not None:
            for key, token_id in (
                ("bos_token", self.tokenizer.bos_id),
                ("eos_token", self.tokenizer.eos_id),
            ):
                found.setdefault(key, piece(token_id))
        return found

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **self.special_tokens,
            )
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"the chat template rejected the messages: {e}") from e

    def encode(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True):
        """Prompt token ids of a conversation, ready for the engine."""
        text = self.render(messages, add_generation_prompt)
        ids = [self.tokenizer.bos_id] if self.is_default else []
        if not self._special_ids:
            return ids + self.tokenizer.encode(text)
        pattern = "(" + "|".join(re.escape(t) for t in self._special_ids) + ")"
        for part in re.split(pattern, text):
            if part in self._special_ids:
                ids.append(self._special_ids[part])
            elif part:
                ids.extend(self.tokenizer.encode(part))
        return ids
