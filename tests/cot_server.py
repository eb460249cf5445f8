"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for the CoT tests.

The request's ``model`` picks a behaviour. The server knows the labels by the SHA-256 of the image bytes
(the test registers them), which is how an "oracle" endpoint answers correctly without being told.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from factory.prompts import EMOTIONS, format_answer


class Script:
    def __init__(self, labels_by_hash: dict[str, str], slow_seconds: float = 2.0, delay: float = 0.0):
        self.labels = labels_by_hash
        self.slow_seconds = slow_seconds
        self.delay = delay
        self.calls: Counter = Counter()  # (model, image hash) -> calls
        self.auth_headers: list[str] = []
        self.requests: list[dict] = []  # the request bodies as sent (image data left in)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.redirect_to = ""  # where model "redirect" sends the client


def _handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _reply(self, code: int, body: dict | str):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/v1/chat/completions":
                return self._reply(404, {"error": "not found"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            model = body["model"]
            url = body["messages"][0]["content"][0]["image_url"]["url"]
            digest = hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
            text = body["messages"][0]["content"][1]["text"]
            label = script.labels[digest]
            with script.lock:
                script.calls[(model, digest)] += 1
                n = script.calls[(model, digest)]
                script.auth_headers.append(self.headers.get("Authorization", ""))
                script.requests.append(body)
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            left = []

            def leave():
                # leave the in-flight count before the reply is sent: once the client has its answer it may
                # start the next request at once, and must not find this one still counted
                if not left:
                    left.append(True)
                    with script.lock:
                        script.in_flight -= 1

            def respond(code, body):
                leave()
                return self._reply(code, body)

            try:
                if script.delay:
                    time.sleep(script.delay)
                wrong = EMOTIONS[(EMOTIONS.index(label) + 1) % len(EMOTIONS)]
                if model == "oracle":
                    return respond(200, _completion(format_answer(label, f"I see {label} cues.")))
                if model == "wrong":
                    if "Hint:" in text:  # rationalization: follows the hint
                        return respond(200, _completion(format_answer(label, "Given the hint, the cues fit.")))
                    return respond(200, _completion(format_answer(wrong, "Looks different to me.")))
                if model == "malformed":
                    return respond(200, "this is not json" if n % 2 else {"choices": []})
                if model == "rambler":  # right label, no tags
                    return respond(200, _completion(f"I think it is {label}."))
                if model == "slow":
                    time.sleep(script.slow_seconds)
                    return respond(200, _completion(format_answer(label, "late")))
                if model == "flaky":  # 500 then 429 then fine
                    if n == 1:
                        return respond(500, {"error": "boom"})
                    if n == 2:
                        return respond(429, {"error": "slow down"})
                    return respond(200, _completion(format_answer(label, "third time lucky")))
                if model == "down":
                    return respond(503, {"error": "unavailable"})
                if model == "redirect":  # to another host that would take the key and answer
                    leave()
                    self.send_response(302)
                    self.send_header("Location", script.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if model == "drip":  # a valid start, then one byte every 50 ms for as long as the client stays
                    leave()
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    try:
                        for _ in range(400):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.05)
                    except OSError:
                        pass
                    return None
                if model == "huge":  # a well-formed reply of 2 MB
                    return respond(200, _completion(format_answer(label, "x" * 2_000_000)))
                return respond(400, {"error": f"unknown model {model}"})
            finally:
                leave()

    return Handler


def _completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                        "content": text}}]}


class ScriptedServer:
    def __init__(self, script: Script):
        self.script = script
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def labels_by_hash(records) -> dict[str, str]:
    return {hashlib.sha256(r.image_path.read_bytes()).hexdigest(): r.emotion for r in records}


if __name__ == "__main__":  # used by the kill-and-resume test: serve until killed
    import sys

    from factory.data.emoset import read_split

    records = read_split(sys.argv[1], "train").records
    server = ScriptedServer(Script(labels_by_hash(records), delay=float(sys.argv[2])))
    server.thread.start()
    print(server.base_url, flush=True)
    server.thread.join()
