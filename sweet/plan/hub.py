"""Hub backbones for compute nodes without internet: fetched once on the submit host, read from a cache by jobs.

Most clusters' compute nodes cannot reach the Hugging Face hub. The workflow's local rule ``fetch_backbone``
therefore downloads each hub backbone a grid names (config, tokenizer files and safetensors weights, nothing else)
on the submit host, into a standard Hugging Face hub cache whose place is the config key ``hub_cache``. Training
jobs run with ``HF_HUB_OFFLINE=1`` and :func:`resolve_backbone` turns the hub id into the cached snapshot folder;
a backbone that is not there ends the job with one line naming the model and the command that fetches it.

The cache is the library's own layout, so ``hf download <id> --cache-dir <hub_cache>`` fills it as well, and a
cache the cluster already shares can simply be named.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from sweet.errors import UserError

# What a backbone needs: its config, its tokenizer in any of the formats transformers reads, and its weights.
CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = [
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model", "*.model", "*.tiktoken",
]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
# Only for checkpoints that publish no safetensors (older hub repos); transformers loads them with weights_only.
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]


def fetch_command(repo_id: str, cache_dir: str | Path, revision: str = "main") -> str:
    """The shell command that fills the cache for ``repo_id`` (what an offline job's error suggests)."""
    at = "" if revision == "main" else f" --revision {revision}"
    return f"hf download {repo_id}{at} --cache-dir {cache_dir}"


def is_local(name_or_path: str | Path) -> bool:
    return Path(name_or_path).expanduser().exists()


def fetch_backbone(repo_id: str, cache_dir: str | Path, revision: str = "main") -> dict[str, Any]:
    """Download ``repo_id``'s config, tokenizer and weights into the hub cache ``cache_dir``; return what is there.

    A snapshot already complete in the cache is used as is, without asking the hub (a cache filled by hand, or
    fetched by an earlier run, works on a submit host that is offline too).
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cache_dir = Path(cache_dir).expanduser()
    cached = cached_snapshot_folder(repo_id, cache_dir, revision)
    if cached is not None and _complete(cached):
        return _describe(repo_id, cached)
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
        weights = SAFETENSORS_FILES if any(f.endswith(".safetensors") for f in files) else PICKLE_FILES
        patterns = CONFIG_FILES + TOKENIZER_FILES + weights
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    except RepositoryNotFoundError:
        raise UserError(f"backbone: '{repo_id}' is not a model on the Hugging Face hub (or it is private); check "
                        "the id, or log in with `hf auth login` for a gated model") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise UserError(f"backbone: cannot download '{repo_id}' ({_first_line(err)}); this runs on the submit host, "
                        f"which needs internet, or fill the cache elsewhere: "
                        f"{fetch_command(repo_id, cache_dir, revision)}"
                        ) from None
    folder = Path(folder)
    if not _complete(folder):
        raise UserError(f"backbone: '{repo_id}' has no config.json and weights (safetensors or pytorch_model.bin) "
                        "on the hub; it is not a transformers checkpoint sweet can load")
    return _describe(repo_id, folder)


def resolve_backbone(name_or_path: str, cache_dir: str | Path | None = None, revision: str = "main") -> str:
    """A local folder for ``name_or_path``: itself when it is one, else the hub id's snapshot at ``revision`` (a
    branch or tag the cache has a ref for, or a commit) in the cache.

    Offline (``HF_HUB_OFFLINE=1``, how the workflow runs every compute job) a hub id missing from the cache is a
    one-line error naming the model and the command that fetches it. Online, an uncached hub id is returned as
    is and transformers downloads it (the library used from Python, outside the workflow).
    """
    if is_local(name_or_path):
        return str(Path(name_or_path).expanduser())
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise UserError(f"backbone: folder '{name_or_path}' not found (and it is not a hub id); fix the path") from None

    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    snapshot = cached_snapshot_folder(name_or_path, cache, revision)
    if snapshot is not None and _complete(snapshot):
        return str(snapshot)
    if offline():
        at = "" if revision == "main" else f" at revision {revision}"
        raise UserError(
            f"backbone: '{name_or_path}'{at} is not in the hub cache {cache}, and this job runs offline (compute "
            f"nodes cannot reach the hub); fetch it on the submit host: `snakemake fetch --config grid=<grid>` or "
            f"`{fetch_command(name_or_path, cache, revision)}`"
        )
    return name_or_path


def offline() -> bool:
    """Whether the hub is off limits for this process (read when called, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cached_snapshot_folder(repo_id: str, cache_dir: str | Path, revision: str = "main") -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` (a branch, or a commit hash), read from the hub cache's
    layout alone (no hub client, no network: cheap enough for planning a grid); None when it is not there."""
    folder = Path(cache_dir).expanduser() / ("models--" + repo_id.replace("/", "--"))
    ref = folder / "refs" / revision
    try:
        commit = ref.read_text().strip() if ref.is_file() else revision
    except OSError:
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None


def snapshot_revision(folder: str | Path) -> str | None:
    """The hub commit a cached snapshot folder holds (``…/snapshots/<sha>``), for the training record."""
    path = Path(folder)
    return path.name if path.parent.name == "snapshots" else None


# ------------------------------------------------------------------------------------------------ internals
def _complete(folder: Path) -> bool:
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    has_weights = any(fnmatch.fnmatch(n, pat) for n in names for pat in SAFETENSORS_FILES + PICKLE_FILES)
    return "config.json" in names and has_weights


def _describe(repo_id: str, folder: Path) -> dict[str, Any]:
    return {
        "repo_id": repo_id,
        "revision": snapshot_revision(folder),
        "snapshot": str(folder),
        "files": sorted(p.name for p in folder.iterdir()),
    }


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
