#!/usr/bin/env python3
"""A fake GitHub release on loopback, for scripts/test-action.sh.

    fake_release.py DIR LOG

Serves the files of DIR (e.g. peercache-x86_64-unknown-linux-musl.tar.gz and SHA256SUMS) at
http://127.0.0.1:PORT/, appends the path of every request to LOG (one line each, so a test can
tell whether anything was downloaded), prints `FAKE_RELEASE_URL=http://127.0.0.1:PORT` once it
listens, and runs until SIGTERM.
"""

import http.server
import os
import signal
import sys
import threading


def main() -> None:
    root, log_path = sys.argv[1], sys.argv[2]

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=root, **kwargs)

        def do_GET(self):  # noqa: N802 (the name http.server calls)
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(self.path + "\n")
            super().do_GET()

        def log_message(self, format, *args):  # noqa: A002 (the signature http.server uses)
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"FAKE_RELEASE_URL=http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    os._exit(0)


if __name__ == "__main__":
    main()
