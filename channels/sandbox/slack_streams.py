"""Slack's agent sessions and message streaming, as the workspace's Web API answers them.

``agents.sessions.setStatus`` and ``rename`` keep each thread's session; ``chat.startStream``,
``appendStream`` and ``stopStream`` keep a message in streaming state whose text grows with
each call; a person's click on Stop ends every stream of the thread (``stop_streams``).
"""

from typing import Any

Json = dict[str, Any]
#: The app's bot user and bot, as ``auth.test`` names them; its posts and streams are theirs.
BOT_USER = "UBOT"
BOT_ID = "BBOT"
#: The statuses a session can show (Slack's four).
SESSION_STATUSES = ("processing", "active", "suspended", "closed")


class StreamingMethods:
    """The session and streaming methods of ``SlackWebApi``, over its messages and sessions."""

    messages: list[Json]
    sessions: dict[tuple[str, str], Json]

    def next_ts(self) -> str:
        raise NotImplementedError  # the workspace's clock (SlackWebApi.next_ts)

    def _bot_message(self, channel: str, **fields: Any) -> Json:
        """A new message by the app in ``channel``, stamped with the next ts."""
        return {
            "type": "message",
            "channel": channel,
            "ts": self.next_ts(),
            "user": BOT_USER,
            "bot_id": BOT_ID,
            **fields,
        }

    def session_statuses(self, channel: str, thread_ts: str) -> list[str]:
        """Every status one thread's session showed, in order: set by agents.sessions.setStatus,
        or by chat.stopStream (its ``session_status``, else Slack's default, active)."""
        return list(self.sessions.get((channel, thread_ts), {}).get("history", []))

    def _show(self, key: tuple[str, str], status: str) -> None:
        session = self.sessions.setdefault(key, {"title": None})
        session["status"] = status
        history = session.setdefault("history", [])
        if not history or history[-1] != status:  # the same status again shows no change
            history.append(status)

    def _agents_sessions_setStatus(self, args: Json) -> Json:
        """Creates the thread's session if needed (its title, initiator and name are kept from
        that first call, as Slack does) and sets its status."""
        status = args.get("status")
        if status not in SESSION_STATUSES:
            return {"ok": False, "error": "invalid_status"}
        if not args.get("thread_ts"):
            return {"ok": False, "error": "thread_ts_required"}
        key = (str(args.get("channel_id")), str(args["thread_ts"]))
        session = self.sessions.setdefault(
            key,
            {k: args.get(k) for k in ("title", "initiator_user_id", "username", "icon_emoji")},
        )
        self._show(key, status)
        return {"ok": True, "status": status, "agent_status": status, "title": session["title"]}

    def _agents_sessions_rename(self, args: Json) -> Json:
        session = self.sessions.get((str(args.get("channel_id")), str(args.get("thread_ts"))))
        if session is None:
            return {"ok": False, "error": "session_not_found"}
        session["title"] = args["title"]
        return {"ok": True, "title": args["title"]}

    def _chat_startStream(self, args: Json) -> Json:
        """Posts a message in streaming state; its text grows with each append."""
        if not args.get("recipient_user_id") or not args.get("recipient_team_id"):
            missing = "user" if not args.get("recipient_user_id") else "team"
            return {"ok": False, "error": f"missing_recipient_{missing}_id"}
        message = self._bot_message(
            args["channel"],
            thread_ts=args["thread_ts"],
            text=streamed(args),
            streaming=True,
            username=args.get("username"),
        )
        self.messages.append(message)
        return {"ok": True, "channel": args["channel"], "ts": message["ts"]}

    def _streaming(self, args: Json) -> Json:
        """The message a stream call names, its text grown by the call's; or Slack's error."""
        for message in self.messages:
            if message["channel"] == args["channel"] and message["ts"] == args["ts"]:
                if not message.get("streaming"):
                    return {"ok": False, "error": "message_not_in_streaming_state"}
                message["text"] += streamed(args)
                return message
        return {"ok": False, "error": "message_not_found"}

    def _chat_appendStream(self, args: Json) -> Json:
        message = self._streaming(args)
        if message.get("ok") is False:
            return message
        return {"ok": True, "channel": args["channel"], "ts": args["ts"]}

    def _chat_stopStream(self, args: Json) -> Json:
        message = self._streaming(args)
        if message.get("ok") is False:
            return message
        message["streaming"] = False
        key = (str(message["channel"]), str(message["thread_ts"]))
        self._show(key, str(args.get("session_status") or "active"))
        return {"ok": True, "channel": args["channel"], "ts": args["ts"], "message": message}

    def stop_streams(self, channel: str, thread_ts: str) -> list[str]:
        """Ends every stream in the thread, as a click on Stop does; returns their ts."""
        stopped = []
        for message in self.messages:
            if message.get("streaming") and (message["channel"], message.get("thread_ts")) == (
                channel,
                thread_ts,
            ):
                message["streaming"] = False
                stopped.append(str(message["ts"]))
        return stopped


def streamed(args: Json) -> str:
    """The text a stream call carries: its ``markdown_text`` and its markdown chunks, and a
    line per task update chunk (its title), as Slack renders them in the message."""
    text = str(args.get("markdown_text") or "")
    for chunk in args.get("chunks") or []:
        if chunk.get("type") == "markdown_text":
            text += str(chunk.get("text", ""))
        elif chunk.get("type") == "task_update":
            text += f"\n{chunk.get('title', '')}"
    return text
