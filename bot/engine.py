"""The chat engine: gating, commands, and the turn (store, history, generate, store).

Per-channel ordering lives in `bot.ordering`, the failure policy in `bot.failures`, one
generation under its timeouts in `bot.generation`. A model reply
cut short (no new text for `model.stall_timeout_s`, `model.generation_timeout_s` in all, the
user's Stop, shutdown) keeps the text that came: see `bot.generation`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from bot.access import AccessPolicy, RoleRules
from bot.admission import Arrival, Gate
from bot.attachment_notices import NO_ATTACHMENTS, notices_text, without_text
from bot.attachments import AttachmentLimits, ReadAttachments, read_attachments
from bot.backends.base import Backend, GenerationReport, context_dropper, sees_images
from bot.commands import RESET_COMMANDS, CommandHandler, Defaults, parse_command
from bot.community import CommunityCommands
from bot.completion import Completions, push_input_notices
from bot.config import AccessConfig, ChatConfig, ModelConfig, PersonaConfig
from bot.conversation import ConversationReader, configured_sampling
from bot.edits import MessageEdits
from bot.errors import RateLimited, StorageError
from bot.events import ChatEvent
from bot.failures import (
    CUT_RULES,
    SHUTDOWN_NOTICE,
    notice_after,
    report_cut,
    report_error,
    report_unexpected,
)
from bot.generation import Generations
from bot.metrics import EngineMetrics, NoMetrics
from bot.ordering import ChannelOrder, Slot
from bot.ports import (
    ChannelLocks,
    Conversation,
    LocalChannelLocks,
    Repository,
    SamplingOverrides,
    StoredMessage,
)
from bot.quota import Quota
from bot.ratelimit import RateLimiter
from bot.redact import redact
from bot.reply import CutReason, Reply, ReplyStatus
from bot.sanitize import clip, sanitize_text

logger = logging.getLogger(__name__)

EMPTY_MESSAGE_REPLY = "I didn't catch that: your message was empty. Send me some text and I'll answer."
EMPTY_MODEL_REPLY = "(I have no answer to that. Could you rephrase it?)"
RESET_SKIPPED_REPLY = "(Not answered: this conversation was reset before I got to it.)"
# At shutdown, how long replies cut short after the grace get to store their kept text.
SHUTDOWN_SETTLE_S = 2.0


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
        access: AccessConfig | None = None,
        roles: dict[str, RoleRules] | None = None,
        personas: dict[str, PersonaConfig] | None = None,
    ) -> None:
        self._repository = repository
        self._locks: ChannelLocks = locks if locks is not None else LocalChannelLocks()
        self._metrics: EngineMetrics = metrics if metrics is not None else NoMetrics()
        self._backend = backend
        self._chat = chat
        self._quota = Quota(repository, chat.quota.tokens_per_day)
        community = CommunityCommands(
            repository,
            personas or {},
            self._quota,
            group_context=chat.group_context,
            forget_context=context_dropper(backend),
        )
        defaults = Defaults(model.system_prompt, model.temperature)
        self._commands = CommandHandler(repository, defaults, community)
        self._gate = Gate(
            AccessPolicy(access or AccessConfig(), roles),
            RateLimiter(chat.rate_limit.messages, chat.rate_limit.per_seconds),
        )
        self._sampling = configured_sampling(model)
        self._conversations = ConversationReader(repository, chat, model.system_prompt, self._sampling)
        self._order = ChannelOrder()
        self._generations = Generations(
            backend,
            self._metrics,
            stall_timeout_s=model.stall_timeout_s,
            total_timeout_s=model.generation_timeout_s,
        )
        self._completions = Completions(
            self._order, self._generations, self._metrics, self._sampling, chat.max_input_chars
        )
        self._attachment_limits = AttachmentLimits.from_config(chat)
        self._edits = MessageEdits(repository, self._locks, context_dropper(backend), chat.max_input_chars)

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the engine's load."""
        return EngineStats(in_flight=self._order.in_flight)

    def handle(self, event: ChatEvent) -> Reply:
        """Queue `event` and return its reply at once; read it with `async for` or `await .text()`.
        Raises `ChinwagError` when the engine is closing."""
        self._order.ensure_open()
        received = time.perf_counter()
        arrival = self._gate.on_arrival(event)
        reply = Reply(engaged=arrival.engaged)
        if arrival is Arrival.ANSWER and self._is_reset(event):
            # Now, not in turn: the generation running or queued for this channel is abandoned.
            self._order.reset(event.channel_key)
            self._backend.forget(event.channel_key)
        self._order.queue(
            (event.channel_key,),
            lambda slot: self._handle_in_turn(event, reply, arrival, received, slot),
            name=f"chinwag:{redact(event.channel_key)}",  # task names show in asyncio's logs
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
                logger.info("history of %s moved to %s", redact(old_key), redact(new_key))

        return self._order.queue((old_key, new_key), move, name=f"chinwag:move:{redact(old_key)}")

    def edit(self, event: ChatEvent) -> asyncio.Task[bool]:
        """Queue an edit of a stored message (see `ChatService.edit` and `bot.edits`); the task
        gives True when a stored message changed and raises `StorageError` when the database
        fails. Raises `ChinwagError` at once when the engine is closing."""

        async def edit(slot: Slot) -> bool:
            await slot.turn()
            return await self._edits.edit(event)

        return self._order.queue((event.channel_key,), edit, name=f"chinwag:edit:{redact(event.channel_key)}")

    def delete(self, channel_key: str, platform_message_ids: Sequence[str]) -> asyncio.Task[int]:
        """Queue deleting user messages and the bot's replies to them (see `ChatService.delete`);
        the task gives how many stored messages went and raises `StorageError` when the database
        fails. Raises `ChinwagError` at once when the engine is closing."""
        ids = tuple(platform_message_ids)

        async def delete(slot: Slot) -> int:
            await slot.turn()
            return await self._edits.delete(channel_key, ids)

        return self._order.queue((channel_key,), delete, name=f"chinwag:delete:{redact(channel_key)}")

    async def ask(self, event: ChatEvent) -> str:
        """Handle `event` and return the whole reply text."""
        return await self.handle(event).text()

    def complete(self, conversation: Conversation, overrides: SamplingOverrides, user_key: str) -> Reply:
        """Answer a stateless conversation (OpenAI-style: the caller sends the whole history); see
        `bot.completion.Completions.complete`."""
        self._order.ensure_open()
        if not self._gate.allows_completion(user_key):
            raise RateLimited(self._gate.retry_after(user_key))
        return self._completions.complete(conversation, overrides, user_key)

    def stop(self, channel_key: str, reason: CutReason = CutReason.STOPPED) -> bool:
        """End the channel's running model reply now, keeping its text (see `ChatService.stop`).

        The generation's stream is closed, which stops the model (the local one within a token).
        `Backend.forget` is not called: it is `/reset`'s, and also drops the channel's prompt
        anchors (which keep the next prompt's window start, and so its cached prefix, stable) and
        cancels every job of the channel. The reply then ends ANSWERED with `cut` set and its text
        stored, or, when nothing came yet, with a notice. False when no reply of the channel is
        being generated (e.g. it is still queued, or already done)."""
        return self._generations.stop(channel_key, reason, "on request")

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting events; let in-flight replies finish for `grace_s`; then cut the running
        generations short (their text is kept and stored, marked `SHUTDOWN`; replies not generating
        yet end with a notice) and give them `SHUTDOWN_SETTLE_S` to store it; cancel what is still
        running then, which stores nothing more.
        """

        def cut_all() -> None:
            cut = self._generations.cut_all()
            if cut:
                logger.info("shutdown: %d running replies cut short, their text kept", cut)

        await self._order.close(grace_s, cut=cut_all, settle_s=SHUTDOWN_SETTLE_S)

    async def _handle_in_turn(
        self, event: ChatEvent, reply: Reply, arrival: Arrival, received: float, slot: Slot
    ) -> None:
        """`event`'s whole life once queued: wait for its turn, answer it, finish `reply`."""
        try:
            await slot.turn()
            if slot.superseded:
                logger.info(
                    "message in %s skipped: the channel was reset after it came", redact(event.channel_key)
                )
                await reply.push(RESET_SKIPPED_REPLY)
                status = ReplyStatus.SUPERSEDED
            else:
                status = await self._process(event, reply, arrival, received)
            await reply.finish(status)
        except asyncio.CancelledError:
            await reply.push(notice_after(reply, SHUTDOWN_NOTICE))
            await reply.finish(ReplyStatus.FAILED)
            raise
        except Exception:
            await reply.finish(
                await report_unexpected(reply, f"while handling a message in {redact(event.channel_key)}")
            )
        finally:
            self._metrics.message_handled(event.platform)

    async def _process(
        self, event: ChatEvent, reply: Reply, arrival: Arrival, received: float
    ) -> ReplyStatus:
        try:
            if arrival is Arrival.UNADDRESSED:
                # Read in turn: a /listen just before this message applies to it.
                if (await self._repository.get_settings(event.channel_key)).listen != "all":
                    return ReplyStatus.IGNORED
                arrival = self._gate.rate(event)
        except StorageError as error:
            return await report_error(error, reply, self._metrics, event.channel_key, saved=False)
        if arrival in {Arrival.IGNORED, Arrival.UNADDRESSED}:
            return ReplyStatus.IGNORED
        if arrival is Arrival.RATE_DROP:
            return ReplyStatus.DROPPED
        await reply.engage()
        notice = self._gate.refusal_text(arrival, event)
        if notice is not None:
            await reply.push(notice)
            return ReplyStatus.NOTICE
        text = sanitize_text(event.text)
        attachments = await self._read_attachments(event, text)
        if not text.strip() and not attachments.readable:
            # Nothing for the model: no words, no file it could read (why, when it was sent).
            await reply.push(without_text(attachments.notices) or EMPTY_MESSAGE_REPLY)
            return ReplyStatus.NOTICE
        try:
            # Held from storing the message to storing its reply (or running the command), so a
            # reply written by another process cannot land in between.
            async with self._locks.hold(event.channel_key):
                command = parse_command(text)
                if command is not None:
                    await reply.push(await self._commands.handle(command, replace(event, text=text)))
                    return ReplyStatus.COMMAND
                over_quota = await self._quota.refusal(event)
                if over_quota is not None:  # no model call, nothing stored
                    await reply.push(over_quota)
                    return ReplyStatus.NOTICE
                return await self._answer(event, text, attachments, reply, received)
        except StorageError as error:
            return await report_error(error, reply, self._metrics, event.channel_key, saved=False)

    async def _read_attachments(self, event: ChatEvent, text: str) -> ReadAttachments:
        """What the message's files became (downloaded and read before the channel's lock is
        taken: a slow download must not hold other processes' replies). A command's are ignored."""
        if not event.attachments or parse_command(text) is not None:
            return NO_ATTACHMENTS
        return await read_attachments(
            event.attachments, self._attachment_limits, see_images=sees_images(self._backend)
        )

    async def _answer(
        self, event: ChatEvent, text: str, attachments: ReadAttachments, reply: Reply, received: float
    ) -> ReplyStatus:
        text, input_cut = clip(text, self._chat.max_input_chars)
        stored = await self._repository.append_message(
            event.channel_key,
            "user",
            text,
            author_id=event.author_id,
            author_name=event.author_name,
            platform_message_id=event.message_id,
            attached=attachments.attached,
        )
        if stored is None:
            resolved = await self._resolve_duplicate(event, reply, input_cut)
            if isinstance(resolved, ReplyStatus):
                return resolved
            stored = resolved
        settings = await self._repository.get_settings(event.channel_key)
        conversation, sampling = await self._conversations.for_question(
            event, stored, settings, attachments.images
        )
        where = event.channel_key
        report = GenerationReport()
        generated = await self._generations.run(
            conversation, sampling, reply, where, saved=True, report=report
        )
        if isinstance(generated, ReplyStatus):
            return generated
        if not generated.text.strip():
            if generated.cut is not None:  # cut before any text: nothing to keep
                cut, detail = generated.cut, generated.detail
                return await report_cut(cut, reply, self._metrics, where, detail, kept=False)
            await reply.push(EMPTY_MODEL_REPLY)
            return ReplyStatus.NOTICE
        await self._repository.append_message(
            where,
            "assistant",
            generated.text,
            cut=generated.cut,
            member_id=event.author_id,
            charge=self._quota.charge(event, report, generated.text),
        )
        latency_s = time.perf_counter() - received
        self._metrics.reply_finished(latency_s, generated.chunks)
        logger.debug("answered in %s: %d chars, %.3f s", redact(where), len(generated.text), latency_s)
        await push_input_notices(reply, input_cut, generated.prompt, self._chat.max_input_chars)
        if attachments.notices:
            await reply.push(notices_text(attachments.notices))
        if generated.cut is None:
            return ReplyStatus.ANSWERED
        # The cut's notice last: the web adapter shows it as a marker instead of as text.
        reply.mark_cut(generated.cut)
        return await report_cut(generated.cut, reply, self._metrics, where, generated.detail, kept=True)

    async def _resolve_duplicate(
        self, event: ChatEvent, reply: Reply, input_cut: bool
    ) -> StoredMessage | ReplyStatus:
        """A message whose platform id is already stored. An ordinary duplicate stays silent; a
        redelivered one (an adapter recovering after a crash) gets its stored answer again, or,
        when none was stored, the stored question is returned to be answered now."""
        if not event.redelivered or event.message_id is None:
            logger.info("duplicate message %s in %s ignored", event.message_id, redact(event.channel_key))
            return ReplyStatus.DUPLICATE
        found = await self._repository.answer_to(event.channel_key, event.message_id)
        if found is None:  # cleared (a reset elsewhere) since the insert found it: nothing to answer
            logger.info("redelivered message %s in %s is gone", event.message_id, redact(event.channel_key))
            return ReplyStatus.DUPLICATE
        question, stored_answer = found
        if stored_answer is None:
            logger.info(
                "redelivered message %s in %s: answering it now", event.message_id, redact(event.channel_key)
            )
            return question
        # The answer was written before the crash but perhaps never delivered: give the same one
        # again rather than a second, different one the history doesn't know.
        logger.info(
            "redelivered message %s in %s: stored answer resent", event.message_id, redact(event.channel_key)
        )
        await reply.push(stored_answer.content)
        await push_input_notices(reply, input_cut, None, self._chat.max_input_chars)
        if stored_answer.cut is not None:
            reply.mark_cut(stored_answer.cut)
            await reply.push(CUT_RULES[stored_answer.cut].notice)
        return ReplyStatus.ANSWERED
