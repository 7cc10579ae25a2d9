"""The chat engine: gating, commands, and the turn (store, history, generate, store).

Per-channel ordering lives in `bot.ordering`, the failure policy in `bot.failures`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace

from bot.backends.base import Backend, PreparedPrompt
from bot.commands import RESET_COMMANDS, CommandHandler, Defaults, parse_command
from bot.config import ChatConfig, ModelConfig
from bot.conversation import ConversationReader
from bot.errors import GenerationTimeout, RateLimited, StorageError
from bot.events import ChatEvent
from bot.failures import GENERATION_ERRORS, SHUTDOWN_NOTICE, notice_after, report_error, report_unexpected
from bot.metrics import EngineMetrics, NoMetrics
from bot.ordering import ChannelOrder, Slot
from bot.ports import (
    ChannelLocks,
    Conversation,
    LocalChannelLocks,
    Repository,
    SamplingOverrides,
    SamplingSettings,
    StoredMessage,
)
from bot.ratelimit import RateLimiter, Verdict
from bot.reply import Reply, ReplyStatus
from bot.sanitize import clip, sanitize_text

logger = logging.getLogger(__name__)

EMPTY_MESSAGE_REPLY = "I didn't catch that: your message was empty. Send me some text and I'll answer."
INPUT_CUT_NOTICE = "\n\n(Your message was longer than {limit} characters; I only read the first {limit}.)"
WINDOW_CUT_NOTICE = (
    "\n\n(Your message was too long for my context window; I read only its beginning and its end.)"
)
RATE_LIMIT_REPLY = "You're sending messages faster than I can answer. Please wait {seconds} s and try again."
EMPTY_MODEL_REPLY = "(I have no answer to that. Could you rephrase it?)"
RESET_SKIPPED_REPLY = "(Not answered: this conversation was reset before I got to it.)"


@dataclass(frozen=True, slots=True)
class _Generated:
    """A generation that ran to its end: the text (perhaps empty), its prompt and how many chunks."""

    text: str
    prompt: PreparedPrompt
    chunks: int


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What the engine reports about its load (a metrics gauge reads it)."""

    in_flight: int  # messages, moves and completions queued or running


class ChatEngine:
    """Turns `ChatEvent`s into `Reply`s.

    Messages of one channel are processed strictly in the order `handle` was called; different
    channels proceed concurrently. Each message is one short database transaction per step, never
    held across the model call. Across processes sharing a PostgreSQL database, `locks` (see
    storage/locks.py) is held from storing a message to storing its reply, so each channel's
    replies are in order there too; the default suits one process per database.
    """

    def __init__(
        self,
        repository: Repository,
        backend: Backend,
        model: ModelConfig,
        chat: ChatConfig,
        *,
        locks: ChannelLocks | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self._repository = repository
        self._locks: ChannelLocks = locks if locks is not None else LocalChannelLocks()
        self._metrics: EngineMetrics = metrics if metrics is not None else NoMetrics()
        self._backend = backend
        self._model = model
        self._chat = chat
        self._commands = CommandHandler(repository, Defaults(model.system_prompt, model.temperature))
        self._limiter = RateLimiter(chat.rate_limit.messages, chat.rate_limit.per_seconds)
        self._sampling = SamplingSettings(
            temperature=model.temperature,
            top_p=model.top_p,
            top_k=model.top_k,
            max_new_tokens=model.max_new_tokens,
            repetition_penalty=model.repetition_penalty,
            stop=model.stop,
        )
        self._conversations = ConversationReader(repository, chat, model.system_prompt, self._sampling)
        self._order = ChannelOrder()

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the engine's load."""
        return EngineStats(in_flight=self._order.in_flight)

    def handle(self, event: ChatEvent) -> Reply:
        """Queue `event` and return its reply at once; read it with `async for` or `await .text()`.
        Raises `ChinwagError` when the engine is closing."""
        self._order.ensure_open()
        reply = Reply()
        received = time.perf_counter()
        verdict = self._limiter.check(event.user_key) if event.rate_limited else Verdict.ALLOW
        if verdict is Verdict.ALLOW and self._is_reset(event):
            # Now, not in turn: the generation running or queued for this channel is abandoned.
            self._order.reset(event.channel_key)
            self._backend.forget(event.channel_key)
        self._order.queue(
            (event.channel_key,),
            lambda slot: self._handle_in_turn(event, reply, verdict, received, slot),
            name=f"chinwag:{event.channel_key}",
        )
        return reply

    @staticmethod
    def _is_reset(event: ChatEvent) -> bool:
        if not event.is_admin:
            return False
        command = parse_command(sanitize_text(event.text))
        return command is not None and command.name in RESET_COMMANDS

    def move_channel(self, old_key: str, new_key: str) -> asyncio.Task[None]:
        """Queue moving `old_key`'s history and settings to `new_key` (merging into an existing
        one), e.g. for a group that got a new id; await the returned task for the outcome.

        Like `handle`, the move takes its place in both channels' queues when called: it runs
        after every message already queued for either channel, and messages handled after this
        call wait for it. The task raises `StorageError` when the database fails; the call raises
        `ChinwagError` at once when the engine is closing.
        """

        async def move(slot: Slot) -> None:
            await slot.turn()
            if old_key != new_key:
                await self._repository.move_channel(old_key, new_key)
                logger.info("history of %s moved to %s", old_key, new_key)

        return self._order.queue((old_key, new_key), move, name=f"chinwag:move:{old_key}")

    async def ask(self, event: ChatEvent) -> str:
        """Handle `event` and return the whole reply text."""
        return await self.handle(event).text()

    def complete(self, conversation: Conversation, overrides: SamplingOverrides, user_key: str) -> Reply:
        """Answer a stateless conversation (OpenAI-style: the caller sends the whole history).

        Nothing is read from or written to a channel's history. The new message is sanitized and
        clipped like any other, the rate limit, sampling limits and timeout apply. Raises
        `RateLimited` at once when `user_key` is over the limit, `ChinwagError` when closing.
        """
        self._order.ensure_open()
        if self._limiter.check(user_key) is not Verdict.ALLOW:
            raise RateLimited(self._limiter.retry_after(user_key))
        message, input_cut = clip(sanitize_text(conversation.message), self._chat.max_input_chars)
        conversation = replace(conversation, message=message)
        sampling = overrides.apply(self._sampling)
        reply = Reply()

        async def run() -> None:
            try:
                generated = await self._run_generation(conversation, sampling, reply, user_key, saved=False)
                if isinstance(generated, ReplyStatus):
                    await reply.finish(generated)
                    return
                await self._push_cut_notice(reply, input_cut, generated.prompt)
                await reply.finish(ReplyStatus.ANSWERED)
            except asyncio.CancelledError:
                await reply.finish(ReplyStatus.FAILED)
                raise
            except Exception:
                await reply.finish(await report_unexpected(reply, "in a stateless completion"))

        self._order.start(run(), name="chinwag:completion")
        return reply

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting events; let in-flight replies finish for `grace_s`, then cancel them.

        A cancelled reply stores nothing half-written: the assistant message is only written after
        the generation completed.
        """
        await self._order.close(grace_s)

    async def _handle_in_turn(
        self, event: ChatEvent, reply: Reply, verdict: Verdict, received: float, slot: Slot
    ) -> None:
        """`event`'s whole life once queued: wait for its turn, answer it, finish `reply`."""
        try:
            await slot.turn()
            if slot.superseded:
                logger.info("message in %s skipped: the channel was reset after it came", event.channel_key)
                await reply.push(RESET_SKIPPED_REPLY)
                status = ReplyStatus.SUPERSEDED
            else:
                status = await self._process(event, reply, verdict, received)
            await reply.finish(status)
        except asyncio.CancelledError:
            await reply.push(notice_after(reply, SHUTDOWN_NOTICE))
            await reply.finish(ReplyStatus.FAILED)
            raise
        except Exception:
            await reply.finish(
                await report_unexpected(reply, f"while handling a message in {event.channel_key}")
            )
        finally:
            self._metrics.message_handled(event.platform)

    async def _process(
        self, event: ChatEvent, reply: Reply, verdict: Verdict, received: float
    ) -> ReplyStatus:
        if verdict is Verdict.DROP:
            return ReplyStatus.DROPPED
        if verdict is Verdict.NOTIFY:
            seconds = max(1, round(self._limiter.retry_after(event.user_key)))
            await reply.push(RATE_LIMIT_REPLY.format(seconds=seconds))
            return ReplyStatus.NOTICE
        text = sanitize_text(event.text)
        if not text.strip():
            await reply.push(EMPTY_MESSAGE_REPLY)
            return ReplyStatus.NOTICE
        try:
            # Held from storing the message to storing its reply (or running the command), so a
            # reply written by another process cannot land in between.
            async with self._locks.hold(event.channel_key):
                command = parse_command(text)
                if command is not None:
                    await reply.push(await self._commands.handle(command, replace(event, text=text)))
                    return ReplyStatus.COMMAND
                return await self._answer(event, text, reply, received)
        except StorageError as error:
            return await report_error(error, reply, self._metrics, event.channel_key, saved=False)

    async def _answer(self, event: ChatEvent, text: str, reply: Reply, received: float) -> ReplyStatus:
        text, input_cut = clip(text, self._chat.max_input_chars)
        stored = await self._repository.append_message(
            event.channel_key,
            "user",
            text,
            author_id=event.author_id,
            author_name=event.author_name,
            platform_message_id=event.message_id,
        )
        if stored is None:
            resolved = await self._resolve_duplicate(event, reply, input_cut)
            if isinstance(resolved, ReplyStatus):
                return resolved
            stored = resolved
        conversation, sampling = await self._conversations.for_question(event.channel_key, stored)
        generated = await self._run_generation(conversation, sampling, reply, event.channel_key, saved=True)
        if isinstance(generated, ReplyStatus):
            return generated
        if not generated.text.strip():
            await reply.push(EMPTY_MODEL_REPLY)
            return ReplyStatus.NOTICE
        await self._repository.append_message(event.channel_key, "assistant", generated.text)
        latency_s = time.perf_counter() - received
        self._metrics.reply_finished(latency_s, generated.chunks)
        logger.debug("answered in %s: %d chars, %.3f s", event.channel_key, len(generated.text), latency_s)
        await self._push_cut_notice(reply, input_cut, generated.prompt)
        return ReplyStatus.ANSWERED

    async def _resolve_duplicate(
        self, event: ChatEvent, reply: Reply, input_cut: bool
    ) -> StoredMessage | ReplyStatus:
        """A message whose platform id is already stored. An ordinary duplicate stays silent; a
        redelivered one (an adapter recovering after a crash) gets its stored answer again, or,
        when none was stored, the stored question is returned to be answered now."""
        if not event.redelivered or event.message_id is None:
            logger.info("duplicate message %s in %s ignored", event.message_id, event.channel_key)
            return ReplyStatus.DUPLICATE
        found = await self._repository.answer_to(event.channel_key, event.message_id)
        if found is None:  # cleared (a reset elsewhere) since the insert found it: nothing to answer
            logger.info("redelivered message %s in %s is gone", event.message_id, event.channel_key)
            return ReplyStatus.DUPLICATE
        question, stored_answer = found
        if stored_answer is None:
            logger.info("redelivered message %s in %s: answering it now", event.message_id, event.channel_key)
            return question
        # The answer was written before the crash but perhaps never delivered: give the same one
        # again rather than a second, different one the history doesn't know.
        logger.info("redelivered message %s in %s: stored answer resent", event.message_id, event.channel_key)
        await reply.push(stored_answer.content)
        await self._push_cut_notice(reply, input_cut, None)
        return ReplyStatus.ANSWERED

    async def _push_cut_notice(self, reply: Reply, input_cut: bool, prompt: PreparedPrompt | None) -> None:
        if input_cut:
            await reply.push(INPUT_CUT_NOTICE.format(limit=self._chat.max_input_chars))
        elif prompt is not None and prompt.message_cut:
            await reply.push(WINDOW_CUT_NOTICE)

    async def _run_generation(
        self, conversation: Conversation, sampling: SamplingSettings, reply: Reply, where: str, *, saved: bool
    ) -> _Generated | ReplyStatus:
        """Prepare and stream one generation into `reply`. A failure leaves its notice in the
        reply (see bot.failures) and returns the status to finish with; its half-written text is
        never returned for storing. `saved`: the user's message is in the history."""
        try:
            prompt = await self._backend.prepare(conversation, sampling.max_new_tokens)
            parts = await self._generate(self._backend.generate(prompt, sampling), reply)
        except GENERATION_ERRORS as error:
            return await report_error(error, reply, self._metrics, where, saved=saved)
        return _Generated("".join(parts), prompt, len(parts))

    async def _generate(self, prompt_stream: AsyncGenerator[str, None], reply: Reply) -> list[str]:
        """Copy the backend's stream into `reply` under the generation timeout; return its chunks."""
        parts: list[str] = []
        try:
            async with asyncio.timeout(self._model.generation_timeout_s), aclosing(prompt_stream) as stream:
                async for chunk in stream:
                    parts.append(chunk)
                    await reply.push(chunk)
        except TimeoutError as error:
            raise GenerationTimeout(f"no reply within {self._model.generation_timeout_s:g} s") from error
        return parts
