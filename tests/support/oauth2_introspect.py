#!/usr/bin/python3
"""A real OAuth 2.0 token-introspection endpoint (RFC 7662) for Switchboard's
tests, loopback only, standard library only.

Dovecot's oauth2 passdb asks it whether an access token is valid
(introspection_mode = post: a form `token=...`; `get`: `?token=...`;
`auth`: `Authorization: Bearer ...`). The answer is
`{"active": true, "username": ...}` for a token the test issued and has not
revoked, `{"active": false}` for anything else.

The tokens live in --dir/tokens.json, a JSON object
`{"<token>": {"username": "...", "active": true|false}}` that the test
rewrites atomically (write a temporary file, then rename) to issue, revoke
or rotate tokens; it is read again on every request. Every request is
appended to --dir/requests.log as one JSON line
`{"token": ..., "active": ..., "mode": ...}`, so a test can tell that the
server really was asked.

Listens on 127.0.0.1, on --port (0: any free port); once listening, writes
the port it got into --dir/ready.
"""
import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOG_LOCK = threading.Lock()


class Introspection(BaseHTTPRequestHandler):
    # Keep-alive, as Dovecot's HTTP client expects of a modern server.
    protocol_version = "HTTP/1.1"
    server_version = "sb-oauth2-introspect/1"

    def do_GET(self):
        url = urlsplit(self.path)
        token = None
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            token, mode = auth[7:].strip(), "auth"
        else:
            token, mode = first(parse_qs(url.query).get("token")), "get"
        self.answer(url.path, token, mode)

    def do_POST(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        token = first(parse_qs(body).get("token"))
        self.answer(url.path, token, "post")

    def answer(self, path, token, mode):
        if path != "/introspect":
            self.send_json(404, {"error": "not_found"})
            return
        entry = load_tokens(self.server.dir).get(token) if token else None
        active = bool(entry and entry.get("active"))
        with LOG_LOCK, open(os.path.join(self.server.dir, "requests.log"), "a") as f:
            f.write(json.dumps({"token": token, "active": active, "mode": mode}) + "\n")
        if not token:
            self.send_json(400, {"error": "invalid_request"})
        elif active:
            self.send_json(
                200,
                {
                    "active": True,
                    "username": entry["username"],
                    "scope": "https://mail.example.com/",
                    "token_type": "Bearer",
                },
            )
        else:
            self.send_json(200, {"active": False})

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))


def first(values):
    return values[0] if values else None


def load_tokens(directory):
    try:
        with open(os.path.join(directory, "tokens.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dir", required=True)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Introspection)
    server.daemon_threads = True
    server.dir = a.dir
    ready = os.path.join(a.dir, "ready")
    with open(ready + ".tmp", "w") as f:
        f.write("%d\n" % server.server_address[1])
    os.replace(ready + ".tmp", ready)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
