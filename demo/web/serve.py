"""Serve demo/web offline: the page, transformers.js's browser build, onnxruntime-web's wasm files and one
``svlm export --layout transformers.js`` folder, all from this machine (nothing is fetched from a CDN or the hub).

    ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix tests/js          # once: transformers.js 4.3.1, pinned
    python demo/web/serve.py runs/smol/export-transformers.js        # then open http://127.0.0.1:8080/

URL paths: ``/`` the page, ``/lib/`` transformers.js's ``dist``, ``/ort/`` onnxruntime-web's ``dist``,
``/models/model/`` the export. Every response is sent with the two cross-origin isolation headers, so the
browser allows SharedArrayBuffer and onnxruntime-web runs its multi-threaded wasm. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parent.parent / "tests" / "js" / "node_modules"


def mounts(model: Path, node_modules: Path = NODE_MODULES) -> dict[str, Path]:
    """URL prefix -> folder, checked: a missing folder is one clear error before the server starts."""
    table = {"/lib/": node_modules / "@huggingface" / "transformers" / "dist",
             "/ort/": node_modules / "onnxruntime-web" / "dist", "/models/model/": model, "/": HERE}
    for prefix, folder in table.items():
        if not folder.is_dir():
            hint = " (run: ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix tests/js)" if prefix in ("/lib/", "/ort/") else ""
            raise SystemExit(f"error: {folder} is not a folder{hint}")
    if not (model / "manifest.json").is_file() or not (model / "onnx").is_dir():
        raise SystemExit(f"error: {model} is not an `svlm export --layout transformers.js` folder")
    return table


class Handler(SimpleHTTPRequestHandler):
    """Files under the mounted folders only (SimpleHTTPRequestHandler keeps requests inside each folder)."""

    def __init__(self, *args, table: dict[str, Path], **kwargs):
        self.table = table
        super().__init__(*args, directory=str(HERE), **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, folder in self.table.items():  # longest prefixes first: "/" comes last
            if clean.startswith(prefix):
                self.directory = str(folder)
                return super().translate_path("/" + clean[len(prefix):])
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args) -> None:  # quiet: the page reports its own progress
        pass


Handler.extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                          ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}


def server(model: str | Path, host: str = "127.0.0.1", port: int = 8080,
           node_modules: Path = NODE_MODULES) -> ThreadingHTTPServer:
    table = mounts(Path(model).resolve(), Path(node_modules))
    return ThreadingHTTPServer((host, port), functools.partial(Handler, table=table))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an `svlm export --layout transformers.js` folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--node-modules", default=str(NODE_MODULES), help="where transformers.js is installed")
    args = p.parse_args(argv)
    httpd = server(args.model, args.host, args.port, Path(args.node_modules))
    print(f"serving {args.model} on http://{args.host}:{httpd.server_address[1]}/", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
