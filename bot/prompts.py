"""Prompt formats: how a `Conversation` becomes model input, cut to fit the context window.

Formats (the `model.prompt_format` config values):

- ``chat_template``: the tokenizer's own chat template with ``add_generation_prompt=True``. The
  system prompt is a system message; a template that rejects (or silently drops) the system role
  gets it in front of the first user message instead. Templates that insist on strictly
  alternating user/assistant turns get consecutive same-role turns merged, and never a history
  that starts with an assistant turn.
- ``dialogpt``: DialoGPT's training format: every turn followed by the EOS token, ending with EOS
  (the DialoGPT model card / Gradio tutorial). No system prompt: DialoGPT was trained on Reddit
  threads and has no instruction channel; a system text would be read as one more Reddit comment
  and answered as such.
- ``seq2seq``: BlenderBot style: the history and the new message joined by newlines as the
  *encoder* input; the decoder writes the reply from scratch. No system prompt: BlenderBot only
  knows utterances, so an instruction would be taken as something the other person said.
- ``plain``: ``System: …\\nUser: …\\nAssistant: …\\n…User: {new}\\nAssistant:`` (the TGI/Falcon
  tutorial) with the stop sequence ``"\\nUser:"`` in `PreparedPrompt.stop`. An empty system
  prompt leaves out the ``System:`` line.
- ``auto``: ``seq2seq`` for encoder-decoder models; ``dialogpt`` when the model's name (its path
  or the tokenizer's ``name_or_path``) contains "dialogpt", since DialoGPT checkpoints carry no
  usable template; otherwise ``chat_template`` when the tokenizer has one, else ``plain``.

Speakers: in a group channel every user turn, the new message too, is ``NAME: TEXT`` in all four
formats (`Turn.text`, `Conversation.message_text`; the engine cleans NAME with
`bot.speakers.clean_speaker_name`); assistant turns carry no name, and in a direct chat a user
turn is TEXT alone.

Fitting: the rendered prompt must fit `max_tokens` counted with the real tokenizer. The oldest
turns go first; the system prompt and the new message always stay. If those two alone do not
fit, the new message is cut in the middle (its first and last tokens kept, joined by " […] ";
a speaker's name in front of it is kept whole) and `message_cut` is set; only when the system
prompt alone leaves the message less than 32 tokens (or a quarter of the window) is the system
prompt cut the same way. Control tokens typed by users are encoded as plain text, never as the
model's special tokens.

This module does not import torch or transformers: any object with `encode`, `decode` and (for
``chat_template``) `apply_chat_template` in the transformers style works as the tokenizer.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from bot.backends.base import PreparedPrompt, PromptMessage
from bot.errors import ConfigError
from bot.ports import Conversation, Turn, spoken

logger = logging.getLogger(__name__)

FORMAT_NAMES: tuple[str, ...] = ("auto", "chat_template", "dialogpt", "seq2seq", "plain")
"""Valid values of `model.prompt_format`."""

CUT_MARKER = " […] "
"""Put where the middle of a too-long message was cut out."""

_MIN_MESSAGE_TOKENS = 32  # room the new message keeps even when the system prompt must be cut


class PromptTokenizer(Protocol):
    """What the formats need from a tokenizer (transformers' `PreTrainedTokenizerBase` fits)."""

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        """Text to token ids."""
        ...

    def decode(self, token_ids: list[int], **kwargs: Any) -> Any:
        """Token ids to text (a str for a flat list of ids)."""
        ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any:
        """Render messages with the tokenizer's chat template."""
        ...


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    def _conforms(tokenizer: PreTrainedTokenizerBase) -> PromptTokenizer:
        return tokenizer  # mypy checks transformers' tokenizers against the protocol here


@dataclass(frozen=True, slots=True)
class _Rendered:
    text: str
    ids: list[int]
    messages: tuple[PromptMessage, ...] = ()  # see `ChatTemplateFormat.keeps_messages`


class _TokenMemo:
    """Encodes each distinct text once per `render` call (turns are measured, then rendered)."""

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            # split_special_tokens: a user typing "<|endoftext|>" gets text, not the control token.
            ids = list(self._tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
            self._cache[text] = ids
        return ids


class PromptFormat(ABC):
    """Renders conversations for one model family; bound to one tokenizer.

    Not thread-safe (tokenizers are not): callers serialise `render` calls per instance.
    """

    name: ClassVar[str]
    uses_system_prompt: ClassVar[bool] = True
    stop: tuple[str, ...] = ()

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def _build(self, system: str, turns: Sequence[Turn], message: str, memo: _TokenMemo) -> _Rendered:
        """Render exactly these parts (no fitting). `message` is the new message as the model
        reads it (with its speaker's name); each turn is rendered as `Turn.text`."""

    def _first_turn_ok(self, turns: Sequence[Turn]) -> bool:
        """Whether a prompt may start its history with `turns[0]` (see `ChatTemplateFormat`)."""
        return True

    def render(
        self,
        conversation: Conversation,
        max_tokens: int,
        *,
        keep_from: int | None = None,
        slack: float = 0.0,
    ) -> PreparedPrompt:
        """Render `conversation` into at most `max_tokens` tokens (see the module docstring).

        Never raises for long input. The result exceeds `max_tokens` only when the window cannot
        even hold the format's own fixed text.

        For a caller that caches the processed prompt per channel: `keep_from` is where the
        previous prompt started the history; when the history from there still fits, it starts
        there again (the prompt then begins with the previous one). Otherwise, when old turns must
        go, `slack` (a fraction of `max_tokens`) is freed on top, so that the new start, too,
        lasts for several turns instead of moving with every message.
        """
        memo = _TokenMemo(self.tokenizer)
        system = conversation.system_prompt if self.uses_system_prompt else ""
        history = list(conversation.history)
        message = conversation.message_text

        base = self._build(system, [], message, memo)
        if len(base.ids) > max_tokens:
            # The message's own text is cut; its speaker's name stays whole in front of it.
            content, speaker = conversation.message, conversation.speaker
            system, cut_content = self._cut_to_fit(system, content, speaker, max_tokens, memo)
            rendered = self._build(system, [], spoken(cut_content, speaker), memo)
            return self._prepared(rendered, 0, message_cut=cut_content != content)

        built: dict[int, _Rendered] = {}

        def build(k: int) -> _Rendered:
            if k not in built:
                built[k] = self._build(system, history[len(history) - k :], message, memo)
            return built[k]

        def fits(k: int) -> bool:
            return len(build(k).ids) <= max_tokens

        # The per-turn overhead (role headers, separators), measured on a one-turn render, turns
        # the turns' own token counts into a guess that steers the exact search.
        probe = self._build(system, [Turn("user", "x")], message, memo) if history else base
        overhead = max(0, len(probe.ids) - len(base.ids) - len(memo("x")))
        if keep_from is not None and 0 <= keep_from < len(history):
            anchored = len(history) - keep_from
            if self._first_turn_ok(history[keep_from:]) and fits(anchored):
                return self._prepared(build(anchored), anchored, message_cut=False)
        guess = _guess_kept(history, max_tokens - len(base.ids), overhead, memo)
        kept = _max_true(len(history), fits, guess)
        if kept < len(history) and slack > 0:
            target = int(max_tokens * (1.0 - slack))
            kept = _max_true(kept, lambda k: k == 0 or len(build(k).ids) <= target, kept)
        while kept > 0 and not self._first_turn_ok(history[len(history) - kept :]):
            kept -= 1  # dropping more turns keeps it fitting
        return self._prepared(build(kept), kept, message_cut=False)

    def _prepared(self, rendered: _Rendered, kept: int, *, message_cut: bool) -> PreparedPrompt:
        return PreparedPrompt(
            input_text=rendered.text,
            history_used=kept,
            message_cut=message_cut,
            token_ids=tuple(rendered.ids),
            stop=self.stop,
            messages=rendered.messages,
        )

    def _cut_to_fit(
        self, system: str, message: str, speaker: str | None, max_tokens: int, memo: _TokenMemo
    ) -> tuple[str, str]:
        """Shorten the message's text (and, as a last resort, the system prompt) until both fit
        with the message read as `spoken(message, speaker)`; returns both."""
        marker_len = len(memo(CUT_MARKER))
        min_message = min(_MIN_MESSAGE_TOKENS, max(1, max_tokens // 4), len(memo(message)))
        name_only = spoken("", speaker)  # the room the speaker's name takes
        fixed = len(self._build(system, [], name_only, memo).ids) if system else 0
        if system and fixed + marker_len + min_message > max_tokens:
            logger.warning("the system prompt alone nearly fills the %d-token window; cutting it", max_tokens)
            system = self._fit_text(
                system,
                lambda s: len(self._build(s, [], name_only, memo).ids),
                max_tokens - marker_len - min_message,
                memo,
            )
        message = self._fit_text(
            message, lambda m: len(self._build(system, [], spoken(m, speaker), memo).ids), max_tokens, memo
        )
        return system, message

    def _fit_text(self, text: str, measure: Callable[[str], int], limit: int, memo: _TokenMemo) -> str:
        """Cut the middle of `text` until `measure(text) <= limit`; `text` itself when it fits.

        Re-tokenising the joined pieces can merge tokens across the cut, so the exact length is
        measured and the kept part shrunk by the overshoot (one or two rounds in practice).
        """
        over = measure(text) - limit
        if over <= 0:
            return text
        ids = memo(text)
        keep = len(ids) - over - len(memo(CUT_MARKER))
        for _ in range(8):
            candidate = _cut_middle(self.tokenizer, ids, keep)
            over = measure(candidate) - limit
            if over <= 0 or keep <= 0:
                return candidate
            keep -= over
        return _cut_middle(self.tokenizer, ids, 0)


def _guess_kept(history: Sequence[Turn], room: int, overhead: int, memo: _TokenMemo) -> int:
    """Estimate how many newest turns fit in `room` tokens; turns beyond it are never encoded."""
    used = 0
    kept = 0
    for turn in reversed(history):
        used += len(memo(turn.text)) + overhead
        if used > room:
            break
        kept += 1
    return kept


def unknown_format(name: str) -> ConfigError:
    """The error for a `model.prompt_format` value that is not in `FORMAT_NAMES`."""
    return ConfigError(
        f"model.prompt_format: unknown format {name!r}; expected one of {', '.join(FORMAT_NAMES)}"
    )


def _cut_middle(tokenizer: PromptTokenizer, ids: Sequence[int], keep: int) -> str:
    """Keep the first and last tokens of `ids` (`keep` in all) around `CUT_MARKER`."""
    keep = max(0, keep)
    head = (keep + 1) // 2
    tail = keep - head

    def dec(part: Sequence[int]) -> str:
        return str(tokenizer.decode(list(part), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    return dec(ids[:head]) + CUT_MARKER + (dec(ids[len(ids) - tail :]) if tail else "")


def _max_true(n: int, pred: Callable[[int], bool], guess: int) -> int:
    """Largest k in [0, n] with pred(k), for a monotone pred (true up to some k) with pred(0) true.

    Gallops from `guess` and then bisects, so a good guess costs two or three calls.
    """
    guess = min(max(guess, 0), n)
    lo, hi = 0, n + 1  # pred(lo) holds; pred(hi) fails (n + 1 is a sentinel never evaluated)
    if pred(guess):
        lo = guess
        step = 1
        while lo < n:
            probe = min(n, lo + step)
            if pred(probe):
                lo = probe
                step *= 2
            else:
                hi = probe
                break
    else:
        hi = guess
        step = 1
        while hi > 0:
            probe = max(0, hi - step)
            if probe == 0 or pred(probe):
                lo = probe
                break
            hi = probe
            step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid
    return lo


class ChatTemplateFormat(PromptFormat):
    """The tokenizer's chat template (see the module docstring)."""

    name = "chat_template"
    keeps_messages: ClassVar[bool] = False
    """Whether the prompt carries the fitted messages too (`PreparedPrompt.messages`), for a model
    side that renders them again with images (`bot.backends.vision_prompt`)."""

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        super().__init__(tokenizer)
        self.system_role_ok = self._template_accepts(
            [{"role": "system", "content": "SYS-PROBE"}, {"role": "user", "content": "hi"}], "SYS-PROBE"
        )
        self.strict_alternation = not (
            self._template_accepts([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
            and self._template_accepts(
                [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
            )
        )

    def _template_accepts(self, messages: list[dict[str, str]], must_contain: str = "") -> bool:
        # Templates reject what they do not support by raising (jinja's raise_exception); a few drop
        # the system message silently, which the probe text catches.
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:
            return False
        return must_contain in str(text)

    def _first_turn_ok(self, turns: Sequence[Turn]) -> bool:
        return not self.strict_alternation or turns[0].role == "user"

    def _messages(self, system: str, turns: Sequence[Turn], message: str) -> list[dict[str, str]]:
        rest = [{"role": t.role, "content": t.text} for t in turns]
        rest.append({"role": "user", "content": message})
        if self.strict_alternation:
            merged: list[dict[str, str]] = []
            for m in rest:
                if merged and merged[-1]["role"] == m["role"]:
                    merged[-1] = {"role": m["role"], "content": merged[-1]["content"] + "\n" + m["content"]}
                else:
                    merged.append(m)
            # A strict template starts with a user turn; `_first_turn_ok` makes `history_used` agree.
            rest = merged[1:] if merged[0]["role"] == "assistant" else merged
        if not system:
            return rest
        if self.system_role_ok:
            return [{"role": "system", "content": system}, *rest]
        first_user = next(i for i, m in enumerate(rest) if m["role"] == "user")
        rest[first_user] = {"role": "user", "content": system + "\n\n" + rest[first_user]["content"]}
        return rest

    def _build(self, system: str, turns: Sequence[Turn], message: str, memo: _TokenMemo) -> _Rendered:
        messages = self._messages(system, turns, message)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            # Control tokens typed by users stay text (transformers >= 5; older ones ignore it).
            sanitize_control_tokens=True,
        )
        if not self.keeps_messages:
            return _Rendered(str(text), [int(i) for i in ids])
        kept = tuple(PromptMessage(_role(m["role"]), m["content"]) for m in messages)
        return _Rendered(str(text), [int(i) for i in ids], kept)


def _role(role: str) -> Literal["system", "user", "assistant"]:
    if role == "system":
        return "system"
    return "assistant" if role == "assistant" else "user"


class DialoGPTFormat(PromptFormat):
    """Turns joined by EOS, ending with EOS; no system prompt (see the module docstring)."""

    name = "dialogpt"
    uses_system_prompt = False

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        super().__init__(tokenizer)
        eos_token = getattr(tokenizer, "eos_token", None)
        eos_id = getattr(tokenizer, "eos_token_id", None)
        if not eos_token or eos_id is None:
            raise ConfigError("model.prompt_format: dialogpt needs a tokenizer with an EOS token")
        self.eos_token: str = str(eos_token)
        self.eos_id: int = int(eos_id)

    def _build(self, system: str, turns: Sequence[Turn], message: str, memo: _TokenMemo) -> _Rendered:
        contents = [t.text for t in turns] + [message]
        ids: list[int] = []
        for content in contents:
            ids.extend(memo(content))
            ids.append(self.eos_id)
        return _Rendered("".join(c + self.eos_token for c in contents), ids)


class Seq2SeqFormat(PromptFormat):
    """Newline-joined history + message as encoder input; no system prompt (see module docstring)."""

    name = "seq2seq"
    uses_system_prompt = False

    def _build(self, system: str, turns: Sequence[Turn], message: str, memo: _TokenMemo) -> _Rendered:
        text = "\n".join([t.text for t in turns] + [message])
        ids = self.tokenizer.encode(text, add_special_tokens=True, split_special_tokens=True)
        return _Rendered(text, list(ids))


class PlainFormat(PromptFormat):
    """``System:/User:/Assistant:`` lines with the "\\nUser:" stop (see the module docstring)."""

    name = "plain"
    stop = ("\nUser:",)

    def _build(self, system: str, turns: Sequence[Turn], message: str, memo: _TokenMemo) -> _Rendered:
        lines = [f"System: {system}\n"] if system else []
        lines.extend(f"{'User' if t.role == 'user' else 'Assistant'}: {t.text}\n" for t in turns)
        lines.append(f"User: {message}\nAssistant:")
        text = "".join(lines)
        ids = self.tokenizer.encode(text, add_special_tokens=True, split_special_tokens=True)
        return _Rendered(text, list(ids))


_FORMATS: dict[str, type[PromptFormat]] = {
    f.name: f for f in (ChatTemplateFormat, DialoGPTFormat, Seq2SeqFormat, PlainFormat)
}


def resolve_format(
    name: str, tokenizer: PromptTokenizer, is_encoder_decoder: bool, *, model_name: str | None = None
) -> PromptFormat:
    """Build the prompt format `name` (one of `FORMAT_NAMES`) for this tokenizer.

    ``auto`` picks as the module docstring says; `model_name` defaults to the tokenizer's
    ``name_or_path``. Raises `ConfigError` for an unknown name or a format the tokenizer cannot
    serve (``chat_template`` without a template, ``dialogpt`` without an EOS token).
    """
    if name == "auto":
        label = (
            model_name if model_name is not None else str(getattr(tokenizer, "name_or_path", ""))
        ).lower()
        if is_encoder_decoder:
            name = "seq2seq"
        elif "dialogpt" in label:
            name = "dialogpt"
        elif getattr(tokenizer, "chat_template", None):
            name = "chat_template"
        else:
            name = "plain"
    cls = _FORMATS.get(name)
    if cls is None:
        raise unknown_format(name)
    if cls is ChatTemplateFormat and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "model.prompt_format: chat_template, but the model's tokenizer has no chat template"
        )
    return cls(tokenizer)
