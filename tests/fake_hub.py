"""A stand-in for the Hugging Face hub on 127.0.0.1, for tests and CI (never a real network).

It serves model repositories from a local folder (``<root>/<org>/<name>/<files>``) through the few endpoints
``huggingface_hub`` uses to download a snapshot: repo info, the recursive tree listing and ``resolve`` downloads,
with the headers the client checks (commit hash, ETag, size). Point a process at it with
``HF_ENDPOINT=http://127.0.0.1:<port>``; stop it and that process has no hub at all.

    python tests/fake_hub.py --root DIR --port-file FILE    # serves until killed; writes the port to FILE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.requests: list[str] = []  # every path asked for, so a test can tell whether the hub was used

    def repos(self) -> dict[str, Path]:
        return {f"{org.name}/{repo.name}": repo for org in self.root.iterdir() if org.is_dir()
                for repo in org.iterdir() if repo.is_dir()}

    @staticmethod
    def files(repo: Path) -> list[Path]:
        return sorted(p for p in repo.rglob("*") if p.is_file())

    def commit(self, repo: Path) -> str:
        digest = hashlib.sha1()
        for path in self.files(repo):
            digest.update(str(path.relative_to(repo)).encode() + path.read_bytes())
        return digest.hexdigest()

    def split(self, rest: str) -> tuple[str, Path, str] | None:
        """``org/name/<tail>`` → (repo id, repo folder, tail)."""
        for repo_id, folder in self.repos().items():
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return repo_id, folder, rest[len(repo_id) + 1:]
        return None

    def serve(self, port: int = 0) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj: object, head: bool = False) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

            def _missing(self, head: bool = False) -> None:
                self._send(404, b'{"error": "Repository not found"}',
                           {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"}, head)

            def handle_request(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(path)
                if path.startswith("/api/models/"):
                    found = hub.split(path[len("/api/models/"):])
                    if found is None:
                        return self._missing(head)
                    repo_id, folder, tail = found
                    sha = hub.commit(folder)
                    files = hub.files(folder)
                    if tail.startswith("tree/"):
                        return self._json([
                            {"type": "file", "path": str(p.relative_to(folder)), "size": p.stat().st_size,
                             "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files
                        ], head)
                    siblings = [{"rfilename": str(p.relative_to(folder))} for p in files]
                    return self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "siblings": siblings,
                                       "private": False, "tags": []}, head)
                found = hub.split(path.lstrip("/"))
                if found is None or "/resolve/" not in "/" + found[2]:
                    return self._missing(head)
                _, folder, tail = found
                filename = tail.split("/", 2)[2] if tail.count("/") >= 2 else ""
                file = folder / filename
                if not filename or not file.is_file():
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound",
                                                 "X-Repo-Commit": hub.commit(folder)}, head)
                body = file.read_bytes()
                headers = {"X-Repo-Commit": hub.commit(folder),
                           "ETag": '"' + hashlib.sha1(body).hexdigest() + '"',
                           "Content-Type": "application/octet-stream"}
                return self._send(200, body, headers, head)

            def do_GET(self) -> None:  # noqa: N802
                self.handle_request(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self.handle_request(head=True)

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder of <org>/<name>/ model repositories")
    parser.add_argument("--port-file", required=True, help="where to write the port it listens on")
    args = parser.parse_args()
    server = FakeHub(args.root).serve()
    Path(args.port_file).write_text(str(server.server_address[1]))
    threading.Event().wait()


if __name__ == "__main__":
    main()
