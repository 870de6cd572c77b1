"""Hub-ready checkpoints: model card, self-contained folder, and upload.

- `hf_wavepos.hub.card`: `render_card`, the model card with tables from an evaluation run
- `hf_wavepos.hub.folder`: `assemble_folder` (what would be uploaded) and `check_folder`
- `hf_wavepos.hub.upload`: `push_folder`, one commit after every check has passed
"""

from hf_wavepos.hub.card import render_card
from hf_wavepos.hub.folder import assemble_folder, check_folder, check_remote_code
from hf_wavepos.hub.upload import push_folder

__all__ = ["assemble_folder", "check_folder", "check_remote_code", "push_folder", "render_card"]
