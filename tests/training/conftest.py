import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the runs here use the embedded corpus only
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture()
def fresh_accelerate():
    """Runs Accelerate in this process; resets its singletons before and after so tests start clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield lambda: AcceleratorState._reset_state(reset_partial_state=True)
    AcceleratorState._reset_state(reset_partial_state=True)
