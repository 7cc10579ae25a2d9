"""Fitting a conversation into a remote model's context window without its tokenizer.

A remote backend has no tokenizer here (loading one would pull in transformers and a download for
a model that runs elsewhere), so the budget is counted in characters: about `CHARS_PER_TOKEN`
characters per token, which holds for English text with the common BPE vocabularies and errs on
the safe side for code. The rules are those of `bot.prompts`: the oldest turns go first; the system
prompt and the new message always stay; if those two alone are too long, the new message is cut in
the middle (its beginning and end kept around `CUT_MARKER`) and `message_cut` is set; only when the
system prompt alone leaves the message less than a quarter of the budget is it cut the same way.
Turns are measured and sent as the model reads them: `Turn.text` and `Conversation.message_text`
(`NAME: TEXT` for a group member's turn; a cut message keeps its speaker's name whole).

Images sent with the new message (the openai backend with `model.vision: true`) count
`IMAGE_TOKENS` tokens each, taken from the budget before the text is fitted, so they push old
turns out as text would; they never take more than half the budget (the estimate is rough, and the
text keeps room: a server that finds the prompt too long after all says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.ports import Conversation, Turn, spoken
from bot.prompts import CUT_MARKER

CHARS_PER_TOKEN = 4
TURN_OVERHEAD_CHARS = 16
"""Role header and separators of one message (about four tokens in the common chat templates)."""
MIN_BUDGET_CHARS = 256
IMAGE_TOKENS = 1024
"""What one image costs in the prompt, as an estimate: a 1024-pixel image (`chat.max_image_side`'s
default) is 576 tokens for LLaVA 1.5, 765 for OpenAI's models at high detail and about 1,340 for
Qwen2-VL; the server's real count depends on its model and the image's size."""


@dataclass(frozen=True, slots=True)
class FittedConversation:
    """What fits: the (maybe cut) system prompt, the newest turns, and the (maybe cut) message as
    the model reads it (`Conversation.message_text`: `NAME: TEXT` in a group). Render the turns
    with `Turn.text`."""

    system_prompt: str
    history: tuple[Turn, ...]
    message: str
    message_cut: bool


def budget_chars(context_window: int | None, max_new_tokens: int) -> int | None:
    """Characters the prompt may use: the window minus the reply's tokens, in characters; None
    (no limit here: the server's own applies) without a configured window."""
    if context_window is None:
        return None
    return max(MIN_BUDGET_CHARS, (context_window - max_new_tokens) * CHARS_PER_TOKEN)


def fit_conversation(
    conversation: Conversation, budget: int | None, *, images: int = 0
) -> FittedConversation:
    """Cut `conversation` to `budget` characters as the module docstring says; `images` is the
    number of images sent with the new message (0 when the backend does not send them)."""
    system = conversation.system_prompt
    message = conversation.message_text
    history = tuple(conversation.history)
    if budget is None:
        return FittedConversation(system, history, message, message_cut=False)
    budget -= min(images * IMAGE_TOKENS * CHARS_PER_TOKEN, budget // 2)
    fixed = _size(system) + _size(message)
    if fixed > budget:
        if _size(system) > budget - budget // 4:
            system = _cut_middle(system, budget - budget // 4 - TURN_OVERHEAD_CHARS)
        name = len(message) - len(conversation.message)  # "NAME: " stays whole in front
        cut = _cut_middle(conversation.message, budget - _size(system) - TURN_OVERHEAD_CHARS - name)
        return FittedConversation(system, (), spoken(cut, conversation.speaker), message_cut=True)
    room = budget - fixed
    kept = _newest_that_fit(history, room)
    return FittedConversation(system, history[len(history) - kept :], message, message_cut=False)


def render_plain(fitted: FittedConversation) -> str:
    """The tutorial's ``System:/User:/Assistant:`` prompt (as `bot.prompts.PlainFormat` renders
    it), ending with "Assistant:" for the model to continue; stop it at "\\nUser:"."""
    lines = [f"System: {fitted.system_prompt}\n"] if fitted.system_prompt else []
    lines.extend(f"{'User' if t.role == 'user' else 'Assistant'}: {t.text}\n" for t in fitted.history)
    lines.append(f"User: {fitted.message}\nAssistant:")
    return "".join(lines)


PLAIN_STOP = "\nUser:"


def _size(text: str) -> int:
    return len(text) + TURN_OVERHEAD_CHARS if text else 0


def _newest_that_fit(history: Sequence[Turn], room: int) -> int:
    used = 0
    kept = 0
    for turn in reversed(history):
        used += len(turn.text) + TURN_OVERHEAD_CHARS
        if used > room:
            break
        kept += 1
    return kept


def _cut_middle(text: str, keep: int) -> str:
    """`text` with its middle replaced by `CUT_MARKER`, at most `keep` characters long."""
    keep = max(0, keep - len(CUT_MARKER))
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + CUT_MARKER + (text[len(text) - tail :] if tail else "")
