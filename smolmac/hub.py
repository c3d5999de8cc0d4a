"""Uploads to the Hugging Face Hub.

    smolmac upload out/x-peft --repo you/smollm2-chat-lora [--private] [--dry-run] [--message M]

The token comes from huggingface_hub's standard places (HF_TOKEN, the `hf auth login` cache) and
is only ever handed to HfApi; the model card is export/card.py's, re-rendered for the repo id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from smolmac.errors import UserError
from smolmac.export import EXPORTERS, detect
from smolmac.export.card import model_card


def export_kind(folder: Path) -> str:
    """The format of an export directory (see smolmac.export.EXPORTERS); UserError if none."""
    kind = detect(folder)
    if kind is None:
        raise UserError(f"{folder}: this is not an export (no PEFT adapter, mlx-lm adapter or model weights); create one with `smolmac export RUN --format {'|'.join(EXPORTERS)} --to DIR`.")
    return kind.name


def _offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no") or bool(constants.HF_HUB_OFFLINE)


def _network_errors() -> tuple:
    errors = [ConnectionError, TimeoutError]
    for mod, name in (("httpx", "TransportError"), ("httpx2", "TransportError"), ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "Timeout")):
        try:
            errors.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def upload(dir, repo: str, private: bool = False, dry_run: bool = False, message: str | None = None, on_message=None) -> str | None:
    """Create (or reuse) a Hub model repo and upload an export directory to it.

    Args:
        dir: an export directory (from `smolmac export`).
        repo: the repository id, e.g. "you/my-model".
        private: create the repository private.
        dry_run: only list the files with sizes and print the card (offline, no token needed).
        message: commit message.
        on_message: callable receiving output lines (e.g. print).

    Returns:
        The repository URL, or None for a dry run.
    """
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    say = on_message or (lambda _m: None)
    folder = Path(dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such directory; pass the --to directory of `smolmac export`.")
    export_kind(folder)
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise UserError(f"--repo: '{repo}' is not a valid Hub repository name; use NAMESPACE/NAME with letters, digits, '-', '_' or '.', e.g. you/smollm2-chat-lora.") from None
    info_path = folder / "smolmac.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if dry_run:
        total = sum(p.stat().st_size for p in files)
        say(f"dry run: would upload {len(files)} files ({_size(total)}) to https://huggingface.co/{repo}{' (private)' if private else ''}:")
        for p in files:
            say(f"  {_size(p.stat().st_size):>10}  {p.relative_to(folder)}")
        if info is not None:
            say("\nREADME.md (model card):\n")
            say(model_card(info, repo))
        return None
    if _offline():
        raise UserError("upload: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to upload (or use --dry-run).")
    token = huggingface_hub.get_token()
    if not token:
        raise UserError("upload: no Hugging Face token found; run `hf auth login` or set HF_TOKEN to a token with write access.")
    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(repo, private=True if private else None, exist_ok=True, repo_type="model")
        if info is not None:  # the snippets load from the real repository id
            (folder / "README.md").write_text(model_card(info, url.repo_id))
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=message or "Upload with smolmac", ignore_patterns=[".*", "**/.*"])
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise UserError(f"upload: the Hub refused the token for {repo} (HTTP {status}); log in again with `hf auth login` using a token with write access to that namespace.") from None
        raise UserError(f"upload: the Hub refused the upload to {repo} (HTTP {status}): {str(e).splitlines()[0]}") from None
    except _network_errors():
        raise UserError("upload: the Hugging Face Hub cannot be reached (offline?); check the connection and retry.") from None
    say(f"uploaded {len(files)} files to {url}")
    return str(url)
