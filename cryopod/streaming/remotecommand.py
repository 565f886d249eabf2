"""Running an exec or attach for a connected client, whatever protocol carries it.

The protocol handlers collect the streams; this module calls the backend and turns its
outcome into the Status for the error stream.
"""

from __future__ import annotations

import logging

from cryopod.errors import StreamClosed
from cryopod.streaming.backend import ExecStreams, StreamingBackend
from cryopod.streaming.model import AttachRequest, ExecRequest
from cryopod.streaming.status import Status, normalize_exit_code
from cryopod.streaming.terminal import ResizeEvents, closed_resize_events

log = logging.getLogger(__name__)

CommandRequest = ExecRequest | AttachRequest


async def run_command(
    backend: StreamingBackend,
    request: CommandRequest,
    streams: ExecStreams,
    resize: ResizeEvents,
) -> Status | None:
    """Run the exec or attach and answer the Status the client must get.

    None if the client went away (the backend met `StreamClosed`); any other failure of the
    backend becomes an InternalError Status, as in the kubelet. Cancellation propagates.
    """
    events = resize if request.tty else closed_resize_events()
    try:
        if isinstance(request, ExecRequest):
            code = await backend.exec(
                request.container_id, request.cmd, streams, tty=request.tty, resize=events
            )
            code = normalize_exit_code(code)
            return Status.success() if code == 0 else Status.exit_code(code, request.cmd)
        await backend.attach(request.container_id, streams, tty=request.tty, resize=events)
        return Status.success()
    except StreamClosed:
        log.info("Client of %s left before it ended", request.container_id)
        return None
    except Exception as exc:  # the one boundary where any backend failure must reach the client
        what = "executing command in" if isinstance(request, ExecRequest) else "attaching to"
        log.warning("Error %s container %s: %s", what, request.container_id, exc, exc_info=True)
        return Status.internal_error(f"error {what} container: {exc}")
