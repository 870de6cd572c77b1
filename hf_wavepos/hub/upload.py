"""Upload an assembled folder to the Hugging Face Hub in one commit.

`push_folder` checks the folder, the token and the connection first, then uploads it in one
commit (``create_repo`` + ``upload_folder``), so a failure never leaves half a model online.
"""

from __future__ import annotations

from pathlib import Path

from hf_wavepos.hub.folder import check_folder
from hf_wavepos.version import __version__


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an assembled folder to the Hub in one commit; return the commit URL.

    Checks first, so that nothing is half uploaded: the folder (`check_folder`), a token
    (argument, HF_TOKEN or the saved login), and that the Hub answers with that token.

    Args:
        folder: from `assemble_folder` (or ``wavepos card``).
        repo_id: ``user/name`` on the Hub; created if missing.
        private: create the repository private.
        revision: a branch to upload to (created from main if missing); default main.
        token: a Hub token; default the environment / saved login.
        commit_message: default "Upload <name> (hf_wavepos <version>)".
    """
    from huggingface_hub import HfApi, get_token

    check_folder(folder)
    token = token or get_token()
    if not token:
        raise RuntimeError("no Hugging Face token: run `huggingface-cli login`, set HF_TOKEN, or pass --token. "
                           "Nothing was uploaded.")
    api = HfApi(token=token)
    try:
        api.whoami()
    except Exception as err:  # offline, refused token, or Hub unreachable: stop before any write
        raise RuntimeError(f"cannot reach the Hugging Face Hub with this token ({type(err).__name__}: {err}). "
                           "Nothing was uploaded.") from err
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), revision=revision,
        commit_message=commit_message or f"Upload {Path(folder).name} (hf_wavepos {__version__})",
    )
    return str(getattr(commit, "commit_url", commit))
