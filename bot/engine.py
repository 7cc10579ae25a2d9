"""The chat engine: commands, gating, history, prompt, generation and per-channel ordering."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace

from bot.backends.base import Backend, PreparedPrompt
from bot.commands import RESET_COMMANDS, CommandHandler, Defaults, parse_command
from bot.config import ChatConfig, ModelConfig
from bot.errors import (
    BackendBusy,
    BackendError,
    BackendRejected,
    BackendStreamBroken,
    BackendUnavailable,
    ChinwagError,
    GenerationCancelled,
    GenerationTimeout,
    RateLimited,
    StorageError,
)
from bot.events import ChatEvent
from bot.metrics import EngineMetrics, NoMetrics
from bot.ports import (
    ChannelLocks,
    Conversation,
    LocalChannelLocks,
    Repository,
    SamplingOverrides,
    SamplingSettings,
    StoredMessage,
    Turn,
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
GENERATION_FAILED_REPLY = (
    "\n\nSorry, I couldn't finish that reply because of an internal error. Please try again."
)
GENERATION_TIMEOUT_REPLY = "\n\nSorry, that took too long and I had to stop. Please try again, maybe shorter."
STORAGE_FAILED_REPLY = "Sorry, I can't reach my memory right now. Please try again in a moment."
EMPTY_MODEL_REPLY = "(I have no answer to that. Could you rephrase it?)"
BUSY_REPLY = "I'm answering a lot of people right now. Please try again in a few seconds."
CANCELLED_NOTICE = "\n\n(Stopped before the end: the conversation was reset, or I am restarting.)"
RESET_SKIPPED_REPLY = "(Not answered: this conversation was reset before I got to it.)"
# Remote model servers (openai / tgi backends). A chat message is stored before generating, so it
# is "saved"; a stateless completion (`complete`) is not, and its replies do not say so. No text of
# a failed reply is ever stored.
UNAVAILABLE_REPLY = (
    "The model server is not reachable right now; your message is saved. Please try again shortly."
)
UNAVAILABLE_STATELESS_REPLY = "The model server is not reachable right now. Please try again shortly."
REJECTED_REPLY = (
    "Sorry, the model server refused this request (HTTP {status}).{saved} If this keeps happening, "
    "please tell the bot's operator."
)
SAVED_NOTE = " Your message is saved."
STREAM_BROKEN_REPLY = (
    "\n\n(The model server's answer broke off or came garbled, so I didn't keep it. Please try again.)"
)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A finished generation: its text and prompt, or the status it failed with."""

    text: str = ""
    prompt: PreparedPrompt | None = None
    failed: ReplyStatus | None = None
    chunks: int = 0


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters for logs and tests."""

    handled: int
    in_flight: int
    channels_waiting: int


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
            max_new_tokens=model.max_new_tokens,
            repetition_penalty=model.repetition_penalty,
            stop=model.stop,
        )
        # channel key -> future done when that channel's latest queued message is finished. A new
        # message waits for it: a FIFO per channel without a long-lived task per channel.
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handled = 0
        self._closing = False
        # channel key -> how many /resets it was sent: a message queued before a reset is not
        # answered after it (its history is gone).
        self._resets: dict[str, int] = {}

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the engine's counters."""
        return EngineStats(self._handled, len(self._tasks), len(self._tails))

    def handle(self, event: ChatEvent) -> Reply:
        """Queue `event` and return its reply at once; read it with `async for` or `await .text()`."""
        reply = Reply()
        if self._closing:
            raise ChinwagError("the engine is shutting down")
        verdict = self._rate_verdict(event)
        resets = self._resets.get(event.channel_key, 0)
        if verdict is Verdict.ALLOW and self._is_reset(event):
            # Now, not in turn: the generation running or queued for this channel is abandoned.
            resets += 1
            self._resets[event.channel_key] = resets
            self._backend.forget(event.channel_key)
        previous = self._tails.get(event.channel_key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[event.channel_key] = mine
        received = time.perf_counter()
        self._track(
            asyncio.create_task(
                self._run_in_order(event, reply, verdict, previous, mine, resets=resets, received=received),
                name=f"chinwag:{event.channel_key}",
            )
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
        if self._closing:
            raise ChinwagError("the engine is shutting down")
        previous = [tail for tail in {self._tails.get(old_key), self._tails.get(new_key)} if tail is not None]
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[old_key] = self._tails[new_key] = mine

        async def run() -> None:
            try:
                for tail in previous:
                    # shield: cancelling the move must not cancel a queued message's future.
                    await asyncio.shield(tail)
                if old_key != new_key:
                    await self._repository.move_channel(old_key, new_key)
                    logger.info("history of %s moved to %s", old_key, new_key)
            finally:
                mine.set_result(None)
                for key in (old_key, new_key):
                    if self._tails.get(key) is mine:
                        del self._tails[key]

        task = asyncio.create_task(run(), name=f"chinwag:move:{old_key}")
        self._track(task)
        return task

    async def last_platform_message_ids(self, platform: str) -> dict[str, str]:
        """Channel id -> platform id of the newest stored user message that was answered (directly
        followed by a stored assistant message), for `platform`'s channels.

        Adapters that can fetch missed messages (Discord's channel history) start after these and
        hand what they fetch over as redelivered: a message stored but not answered before a crash
        is then answered now, one answered already gets its stored answer again.
        """
        return await self._repository.last_platform_message_ids(platform)

    async def ask(self, event: ChatEvent) -> str:
        """Handle `event` and return the whole reply text."""
        return await self.handle(event).text()

    async def stream(self, event: ChatEvent) -> AsyncIterator[str]:
        """Handle `event` and yield its reply chunks."""
        async for chunk in self.handle(event):
            yield chunk

    def complete(self, conversation: Conversation, overrides: SamplingOverrides, user_key: str) -> Reply:
        """Answer a stateless conversation (OpenAI-style: the caller sends the whole history).

        Nothing is read from or written to a channel's history. The new message is sanitized and
        clipped like any other, the rate limit, sampling limits and timeout apply. Raises
        `RateLimited` at once when `user_key` is over the limit, `ChinwagError` when closing.
        """
        if self._closing:
            raise ChinwagError("the engine is shutting down")
        if self._limiter.check(user_key) is not Verdict.ALLOW:
            raise RateLimited(self._limiter.retry_after(user_key))
        message, input_cut = clip(sanitize_text(conversation.message), self._chat.max_input_chars)
        conversation = replace(conversation, message=message)
        sampling = overrides.apply(self._sampling)
        reply = Reply()

        async def run() -> None:
            try:
                outcome = await self._run_generation(conversation, sampling, reply, user_key, saved=False)
                if outcome.failed is None:
                    await self._push_cut_notice(reply, input_cut, outcome.prompt)
                await reply.finish(outcome.failed or ReplyStatus.ANSWERED)
            except asyncio.CancelledError:
                await reply.finish(ReplyStatus.FAILED)
                raise
            except Exception:
                logger.exception("unexpected error in a stateless completion")
                await reply.push(GENERATION_FAILED_REPLY.lstrip())
                await reply.finish(ReplyStatus.FAILED)

        self._track(asyncio.create_task(run(), name="chinwag:completion"))
        return reply

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a reference (tasks are weakly held by the loop) so `close` can wait for it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting events; let in-flight replies finish for `grace_s`, then cancel them.

        A cancelled reply stores nothing half-written: the assistant message is only written after
        the generation completed.
        """
        self._closing = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _rate_verdict(self, event: ChatEvent) -> Verdict:
        if not event.rate_limited:
            return Verdict.ALLOW
        return self._limiter.check(event.user_key)

    async def _run_in_order(
        self,
        event: ChatEvent,
        reply: Reply,
        verdict: Verdict,
        previous: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
        *,
        resets: int,
        received: float,
    ) -> None:
        try:
            if previous is not None:
                # shield: cancelling this task must not cancel the predecessor's future.
                await asyncio.shield(previous)
            if self._resets.get(event.channel_key, 0) != resets:
                logger.info("message in %s skipped: the channel was reset after it came", event.channel_key)
                await reply.push(RESET_SKIPPED_REPLY)
                status = ReplyStatus.NOTICE
            else:
                status = await self._process(event, reply, verdict, received)
            await reply.finish(status)
        except asyncio.CancelledError:
            await reply.push("\n\n(Stopped: the bot is shutting down.)")
            await reply.finish(ReplyStatus.FAILED)
            raise
        except Exception:
            logger.exception("unexpected error while handling a message in %s", event.channel_key)
            await reply.push(GENERATION_FAILED_REPLY.lstrip())
            await reply.finish(ReplyStatus.FAILED)
        finally:
            self._handled += 1
            self._metrics.message_handled(event.platform)
            mine.set_result(None)
            if self._tails.get(event.channel_key) is mine:
                del self._tails[event.channel_key]

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
            logger.error("storage failed for %s: %s", event.channel_key, error)
            self._metrics.generation_failed("storage")
            await reply.push(STORAGE_FAILED_REPLY)
            return ReplyStatus.FAILED

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
        conversation, sampling = await self._conversation_for(event.channel_key, stored)

        started = time.perf_counter()
        outcome = await self._run_generation(conversation, sampling, reply, event.channel_key, saved=True)
        if outcome.failed is not None:
            return outcome.failed
        answer, prompt = outcome.text, outcome.prompt
        if not answer.strip():
            await reply.push(EMPTY_MODEL_REPLY)
            return ReplyStatus.NOTICE
        await self._repository.append_message(event.channel_key, "assistant", answer)
        self._metrics.reply_finished(time.perf_counter() - received, outcome.chunks)
        await self._push_cut_notice(reply, input_cut, prompt)
        logger.debug(
            "answered in %s: %d chars in %.3f s",
            event.channel_key,
            len(answer),
            time.perf_counter() - started,
        )
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

    async def _conversation_for(
        self, channel_key: str, question: StoredMessage
    ) -> tuple[Conversation, SamplingSettings]:
        """The prompt input for `question`: its history and the channel's settings over the defaults."""
        history = await self._history_before(channel_key, question)
        settings = await self._repository.get_settings(channel_key)
        system_prompt = (
            settings.system_prompt if settings.system_prompt is not None else self._model.system_prompt
        )
        sampling = self._sampling
        if settings.temperature is not None:
            sampling = replace(sampling, temperature=settings.temperature)
        conversation = Conversation(
            system_prompt=system_prompt, history=history, message=question.content, context_key=channel_key
        )
        return conversation, sampling

    async def _push_cut_notice(self, reply: Reply, input_cut: bool, prompt: PreparedPrompt | None) -> None:
        if input_cut:
            await reply.push(INPUT_CUT_NOTICE.format(limit=self._chat.max_input_chars))
        elif prompt is not None and prompt.message_cut:
            await reply.push(WINDOW_CUT_NOTICE)

    async def _run_generation(
        self, conversation: Conversation, sampling: SamplingSettings, reply: Reply, where: str, *, saved: bool
    ) -> _Outcome:
        """Prepare and stream one generation into `reply`, turning backend failures into a polite
        error text in the reply (the half-written text is never returned for storing). `saved`:
        the user's message is in the history (the replies may say so)."""
        try:
            prompt = await self._backend.prepare(conversation, sampling.max_new_tokens)
            parts = await self._generate(self._backend.generate(prompt, sampling), reply)
        except BackendBusy as error:
            self._metrics.generation_failed("busy")
            logger.warning("backend busy, %s not answered: %s", where, error)
            await reply.push(BUSY_REPLY)
            return _Outcome(failed=ReplyStatus.NOTICE)
        except GenerationCancelled:
            self._metrics.generation_failed("cancelled")
            logger.info("generation in %s cancelled", where)
            await reply.push(_after(reply, CANCELLED_NOTICE))
            return _Outcome(failed=ReplyStatus.FAILED)
        except GenerationTimeout:
            self._metrics.generation_failed("timeout")
            logger.warning("generation timed out in %s", where)
            await reply.push(_after(reply, GENERATION_TIMEOUT_REPLY))
            return _Outcome(failed=ReplyStatus.FAILED)
        except BackendUnavailable as error:
            self._metrics.generation_failed("unavailable")
            logger.warning("model server unavailable, %s not answered: %s", where, error)
            text = UNAVAILABLE_REPLY if saved else UNAVAILABLE_STATELESS_REPLY
            await reply.push(_after(reply, "\n\n" + text))
            return _Outcome(failed=ReplyStatus.FAILED)
        except BackendRejected as error:
            self._metrics.generation_failed("rejected")
            logger.error("model server refused the request for %s: %s", where, error)
            status = error.status if error.status is not None else "error"
            text = REJECTED_REPLY.format(status=status, saved=SAVED_NOTE if saved else "")
            await reply.push(_after(reply, "\n\n" + text))
            return _Outcome(failed=ReplyStatus.FAILED)
        except BackendStreamBroken as error:
            self._metrics.generation_failed("stream_broken")
            logger.warning("reply stream broke in %s: %s", where, error)
            await reply.push(_after(reply, STREAM_BROKEN_REPLY))
            return _Outcome(failed=ReplyStatus.FAILED)
        except (BackendError, MemoryError) as error:
            self._metrics.generation_failed("backend")
            logger.error("generation failed in %s: %s", where, error, exc_info=error)
            await reply.push(_after(reply, GENERATION_FAILED_REPLY))
            return _Outcome(failed=ReplyStatus.FAILED)
        return _Outcome(text="".join(parts), prompt=prompt, chunks=len(parts))

    async def _history_before(self, channel_key: str, new_message: StoredMessage) -> list[Turn]:
        """The channel's recent turns before `new_message` (lower ids only, also when it was
        stored long ago), oldest first, within the configured budget."""
        if self._chat.history_messages == 0:
            return []
        recent = await self._repository.recent_messages(
            channel_key,
            limit=self._chat.history_messages + 1,
            max_chars=self._chat.history_chars + len(new_message.content),
            max_id=new_message.id,
        )
        return [Turn(message.role, message.content) for message in recent if message.id != new_message.id]

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


def _after(reply: Reply, notice: str) -> str:
    """`notice` as it follows the text already streamed into `reply`: without its leading blank
    line when nothing was streamed."""
    return notice if reply.text_so_far() else notice.lstrip()
