"""A webhook receiver for tests: an HTTP server on 127.0.0.1, in a thread of the test;
and ``failed_delivery``, a webhook with a delivery SEKE gave up on.

It records every request and answers each with the next entry of its script (the
last one repeats): a status code, or "hang" (no answer until the receiver is
closed, as a receiver that never answers). Workers in other processes reach it too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from seke_app.models.webhooks import EventName, WebhookDelivery, WebhookEvent
from seke_app.webhooks.services import webhook_create

HANG = "hang"


@dataclass(frozen=True)
class Received:
    path: str
    # Header names in lower case.
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self, answers: Sequence[int | str] = (200,), body: bytes = b"thanks") -> None:
        self.answers = list(answers)
        self.body = body
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/seke-events"

    def _answer(self, request: Received) -> int | str:
        with self._lock:
            self.received.append(request)
            return self.answers[min(len(self.received), len(self.answers)) - 1]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = receiver._answer(Received(self.path, headers, body))
                if answer == HANG:
                    receiver._closing.wait(60)
                    return
                assert isinstance(answer, int)
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("Location", f"{receiver.url}/moved")
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        """The requests once ``n`` have come; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the receiver got {len(self.received)} requests, not {n}, in {timeout} s"
                )
            time.sleep(0.05)
        return list(self.received)

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


def failed_delivery(url: str = "http://127.0.0.1:9/seke-events") -> WebhookDelivery:
    """A new webhook for ``url`` and its one delivery, which SEKE gave up on."""
    hook = webhook_create(url=url, events=[EventName.RUN_FINISHED])
    event = WebhookEvent.objects.create(name=EventName.RUN_FINISHED, key=f"test:{hook.code}")
    return WebhookDelivery.objects.create(
        hook=hook, event=event, status=WebhookDelivery.Status.GAVE_UP, attempts=4
    )
