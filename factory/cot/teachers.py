"""Teacher backends. Each answers ``respond(record, hint=None) -> str`` with raw text, or raises
``TeacherError`` whose ``kind`` the summary counts (timeout, http_429, http_5xx, connection, …).

* ``openai``: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, LMDeploy, Ollama, hosted
  services). The image travels as a base64 data URL; the API key is read from the environment variable
  named in the config at request time and is never stored, logged or written. The key only travels over
  https or to a loopback address; redirects are not followed (a 3xx is a counted failure, so the key and the
  answer never involve another host); each request has one deadline, ``timeout``, for everything from
  connecting to the last byte, and a reply larger than ``max_response_bytes`` is refused.
* ``local``: a transformers checkpoint (a registered family via ``load_model``, or any image-text-to-text
  model), for users with a GPU.
* ``attributes``: the offline, attribute-grounded teacher (``factory.cot.attributes``).

A teacher never sees the label; ``hint`` is only passed in the optional rationalization pass.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from factory.data.emoset import EmoSetRecord
from factory.errors import ConfigError
from factory.tasks import Task, load_task

KINDS = ("openai", "local", "attributes")


@dataclass
class TeacherConfig:
    """One teacher. Fields that do not apply to a kind are ignored by it."""

    name: str = "attributes"
    kind: str = "attributes"  # openai | local | attributes
    # openai
    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1
    model: str = ""  # served model name, or for `local` a hub id / path
    api_key_env: str | None = None  # name of the env var holding the key (never the key itself)
    concurrency: int = 4  # requests in flight to this endpoint
    timeout: float = 60.0  # seconds per request, connecting to the last byte
    max_response_bytes: int = 1_000_000  # a longer reply is refused (a teacher's answer is a few kB)
    max_retries: int = 4  # retries on 429, 5xx, timeouts and connection errors
    backoff: float = 1.0  # first retry delay in seconds; doubles each retry, with jitter
    temperature: float = 0.7
    max_tokens: int = 512
    image_max_side: int = 768  # larger images are downscaled before upload
    # local
    dtype: str = "auto"
    load_in_4bit: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"teacher {self.name!r}: kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ConfigError(f"teacher {self.name!r}: an openai teacher needs base_url and model")
        if self.kind == "local" and not self.model:
            raise ConfigError(f"teacher {self.name!r}: a local teacher needs model (hub id or path)")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.max_response_bytes < 1:
            raise ConfigError(f"teacher {self.name!r}: concurrency ≥ 1, max_retries ≥ 0, timeout > 0 and "
                              "max_response_bytes ≥ 1 required")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # never echo it: what does not look like a variable name may be the key itself
            raise ConfigError(f"teacher {self.name!r}: api_key_env must name an environment variable (letters, "
                              "digits, _), not hold the key; the value is not shown")
        if self.kind == "openai":
            _check_url(self)


def _check_url(cfg: TeacherConfig) -> None:
    """base_url: http(s), a host, no credentials in it; a key goes over plain http to loopback only."""
    parts = urllib.parse.urlsplit(cfg.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"teacher {cfg.name!r}: base_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"teacher {cfg.name!r}: base_url must not carry credentials (user:password@); name "
                          "the environment variable that holds the key in api_key_env")
    if cfg.api_key_env and parts.scheme == "http" and not _loopback(parts.hostname):
        raise ConfigError(f"teacher {cfg.name!r}: the key would travel unencrypted to {parts.hostname}; use "
                          "https, or a loopback address for a local server")


def _loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TeacherError(Exception):
    """A failed request; ``kind`` is what the summary counts."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


RETRYABLE = {"timeout", "http_429", "http_5xx", "connection"}


def hint_text(label: str) -> str:
    return (f" Hint: the correct answer is {label}. Explain the visual evidence that supports it, "
            f"then answer {label}.")


class AttributeTeacher:
    def __init__(self, cfg: TeacherConfig, task: Task | None = None):
        self.cfg, self.name, self.concurrency, self.task = cfg, cfg.name, cfg.concurrency, load_task(task)
        lex = self.task.teacher
        if not (lex.scales or lex.categories or lex.keywords):
            # every score would be 0 and it would answer the first label for every image: one class of traces
            raise ConfigError(f"teacher {cfg.name!r}: task {self.task.name!r} has no attribute lexicon (teacher: in "
                              "its YAML), so the attribute teacher cannot reason for it; use a model teacher "
                              "(configs/teachers.example.yaml) or give the task a lexicon")

    def respond(self, record: EmoSetRecord, hint: str | None = None) -> str:
        from factory.cot.attributes import attribute_response

        return attribute_response(record.attributes, hint, self.task)


def image_bytes(path: Path, max_side: int) -> tuple[bytes, str]:
    """The image as JPEG/PNG bytes: the original file when small enough, else a downscaled JPEG."""
    from PIL import Image

    with Image.open(path) as img:
        if max(img.size) <= max_side and img.format in ("JPEG", "PNG"):
            return path.read_bytes(), f"image/{img.format.lower()}"
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        return buf.getvalue(), "image/jpeg"


class OpenAITeacher:
    def __init__(self, cfg: TeacherConfig, task: Task | None = None):
        self.cfg, self.name, self.concurrency, self.task = cfg, cfg.name, cfg.concurrency, load_task(task)
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        if cfg.api_key_env and cfg.api_key_env not in os.environ:
            raise ConfigError(f"teacher {cfg.name!r}: environment variable {cfg.api_key_env} (api_key_env) is not set")

    def _payload(self, record: EmoSetRecord, hint: str | None) -> bytes:
        data, mime = image_bytes(record.image_path, self.cfg.image_max_side)
        text = self.task.question("cot") + (hint_text(hint) if hint else "")
        body = {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}},
                {"type": "text", "text": text},
            ]}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        return json.dumps(body).encode()

    def _once(self, payload: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key_env:
            headers["Authorization"] = "Bearer " + os.environ[self.cfg.api_key_env]
        raw = self._post(payload, headers)
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TeacherError("malformed_response", "no choices[0].message.content in the reply") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise TeacherError("malformed_response", "message content is not text")
        return content

    def _post(self, payload: bytes, headers: dict) -> bytes:
        """POST with http.client, which follows no redirect. A timer shuts the socket down at the deadline, so
        a server that drips bytes cannot hold the request past ``timeout``; the body is read up to the cap."""
        import http.client

        parts = urllib.parse.urlsplit(self.url)
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname, parts.port, timeout=self.cfg.timeout)
        expired, held = threading.Event(), []  # held: the socket (conn.sock is dropped once a response has it)

        def expire():
            expired.set()
            for sock in held:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read; close() alone would not
                except OSError:
                    pass

        timer = threading.Timer(self.cfg.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            held.append(conn.sock)
            conn.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=payload,
                         headers=headers)
            response = conn.getresponse()
            if 300 <= response.status < 400:
                raise TeacherError("redirect", f"HTTP {response.status} (redirects are not followed)")
            if response.status >= 400:
                kind = "http_429" if response.status == 429 else "http_5xx" if response.status >= 500 else "http_4xx"
                raise TeacherError(kind, f"HTTP {response.status}")
            raw = response.read(self.cfg.max_response_bytes + 1)
            if len(raw) > self.cfg.max_response_bytes:
                raise TeacherError("too_large", f"reply over {self.cfg.max_response_bytes} bytes")
        except TeacherError:
            raise
        except (TimeoutError, socket.timeout):
            raise TeacherError("timeout", f"no answer within {self.cfg.timeout} s") from None
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise TeacherError("timeout", f"no answer within {self.cfg.timeout} s") from None
            raise TeacherError("connection", type(exc).__name__) from None
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():  # the shutdown can also surface as a short, "complete" body
            raise TeacherError("timeout", f"no answer within {self.cfg.timeout} s")
        return raw

    def respond(self, record: EmoSetRecord, hint: str | None = None) -> str:
        payload = self._payload(record, hint)
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return self._once(payload)
            except TeacherError as exc:
                if exc.kind not in RETRYABLE or attempt == self.cfg.max_retries:
                    raise
                delay = self.cfg.backoff * (2**attempt)
                time.sleep(delay * (0.5 + random.random()))  # jitter spreads retries of parallel workers
        raise AssertionError("unreachable")


class LocalTeacher:
    """A transformers model answering one image at a time (thread-safe via a lock)."""

    def __init__(self, cfg: TeacherConfig, task: Task | None = None):
        self.cfg, self.name, self.concurrency, self.task = cfg, cfg.name, 1, load_task(task)
        self._lock = threading.Lock()
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from transformers import AutoConfig

            from factory.errors import SVLMError
            from factory.families import family_of
            from factory.models import load_model

            try:
                family_of(AutoConfig.from_pretrained(self.cfg.model))
            except SVLMError:
                registered = False
            else:
                registered = True
            if registered:
                # A registered family loads like every student: its image policy, dtype and 4-bit settings.
                # Any error here is the user's to see; falling back would drop the image policy silently.
                self._loaded = load_model(self.cfg.model, dtype=self.cfg.dtype, load_in_4bit=self.cfg.load_in_4bit)
            else:
                # Not a registered family: any image-text-to-text checkpoint still works as a teacher.
                from types import SimpleNamespace

                from transformers import AutoModelForImageTextToText, AutoProcessor

                model = AutoModelForImageTextToText.from_pretrained(self.cfg.model, dtype="auto")
                self._loaded = SimpleNamespace(model=model, processor=AutoProcessor.from_pretrained(self.cfg.model))
        return self._loaded

    def respond(self, record: EmoSetRecord, hint: str | None = None) -> str:
        import torch
        from PIL import Image

        with self._lock:
            loaded = self._load()
            text = self.task.question("cot") + (hint_text(hint) if hint else "")
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = loaded.processor.apply_chat_template(messages, add_generation_prompt=True)
            with Image.open(record.image_path) as img:
                inputs = loaded.processor(images=[[img.convert("RGB")]], text=[prompt], return_tensors="pt")
            inputs = inputs.to(next(loaded.model.parameters()).device)
            sample = self.cfg.temperature > 0
            with torch.no_grad():
                out = loaded.model.generate(**inputs, max_new_tokens=self.cfg.max_tokens, do_sample=sample,
                                            temperature=self.cfg.temperature if sample else None)
            return loaded.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def make_teacher(cfg: TeacherConfig, task: str | Task | None = None):
    """The teacher ``cfg`` describes, asking ``task``'s question (default EmoSet)."""
    return {"openai": OpenAITeacher, "local": LocalTeacher, "attributes": AttributeTeacher}[cfg.kind](cfg, task)

