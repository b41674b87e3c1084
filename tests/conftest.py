import os
import signal
import sys
from pathlib import Path

import pytest
import torch

# Tests (and the scripts they start) import the checkout they live in, even when the package is
# installed in editable mode from another checkout: PYTHONPATH comes before the editable finder.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

# A shell's background job (`cmd &`) starts with SIGINT ignored, and an ignore is inherited across
# exec: the scripts the Ctrl-C tests start would never see the signal (Python keeps an inherited
# ignore, as it should for nohup). A handler here is reset to the default in every child instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test on one torch thread: the suite's tensors are tiny, and on 2 shared cores a second
    OpenMP thread only adds hand-offs (measured 10-30x slower for small ops under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
