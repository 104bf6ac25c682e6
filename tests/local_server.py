"""An HTTP server on 127.0.0.1 at a free port, serving from a thread while used as a context manager: the base of
the tests' stand-ins for the Hugging Face Hub and for remote reward endpoints (tests never reach the network)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    """``with Subclass(...) as server:`` serves ``handler_class`` at ``server.endpoint`` until the block ends."""

    def __init__(self, handler_class):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
