"""Keep what serving never uses out of a serving process: scikit-learn and SciPy (about 100 MB of RSS), and
torch itself in a process that serves an ONNX export (about 200 MB more).

transformers imports them eagerly whenever they are installed: `generation/candidate_generator.py` imports
`sklearn.metrics` (for assisted generation's confidence threshold) and `loss/loss_for_object_detection.py` imports
`scipy.optimize` (for detection losses), and both modules load with every causal LM. scikit-learn then pulls in
pandas, narwhals and rich. The development environment has all of them installed (training and the calibration
fits use scikit-learn), so a server started from it carried them all. `afrl bench` items 5 and 7 measure the
server's peak RSS (bench/results/default_student_service_lean.md).

`skip_unused_transformers_extras` tells transformers (the pinned 4.57; module-level flags of
`transformers.utils.import_utils`, read when those modules are first imported) that the two packages are absent.
Nothing in serving reaches the code they guard. Our own `import sklearn` is unaffected: only transformers' view
changes. `service.backends.load_backend` calls it for both backends (the onnx one loads transformers' tokenizer
and auto classes, which import the generation module too), so `afrl serve`, `afrl.Reranker` and `afrl
batch-score` are lean; training keeps transformers' normal behaviour. A transformers version without these flags
is left alone.

`keep_torch_out` is for a process that will only ever run onnxruntime (`afrl serve --backend onnx`, the Docker
image's command). The ONNX path needs transformers for the tokenizer and chat template only, but transformers
imports torch at import time whenever it is installed (`transformers/utils/generic.py`, pinned 4.57), which took
the ONNX server's RSS from about 95 MB (tokenizer + onnxruntime) to about 300 MB before any model was loaded. Its
`USE_TORCH=0` switch, read once when transformers is first imported, makes transformers treat torch as absent. It
is process-wide and cannot be undone after that import, so only the `afrl serve` command sets it, never a library
call (an `afrl.Reranker` lives in someone else's process), and only while neither torch nor transformers is loaded.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

_FLAGS = ("_sklearn_available", "_scipy_available")


def skip_unused_transformers_extras() -> list[str]:
    """Set transformers' availability flags for scikit-learn and SciPy to False; returns the flags it set."""
    import transformers.utils.import_utils as import_utils

    done = []
    for flag in _FLAGS:
        if getattr(import_utils, flag, None) is True:
            setattr(import_utils, flag, False)
            done.append(flag)
    if done:
        log.debug("transformers will not import %s in this process", ", ".join(done))
    return done


def keep_torch_out() -> bool:
    """Make transformers, when first imported, treat torch as absent (`USE_TORCH=0`); True if it was set.

    Only for a process that never needs torch (see the module docstring). Returns False and changes nothing when
    transformers or torch is already imported (too late to matter) or `USE_TORCH` is set by the user.
    """
    if "transformers" in sys.modules or "torch" in sys.modules or "USE_TORCH" in os.environ:
        return False
    os.environ["USE_TORCH"] = "0"
    log.debug("transformers will not import torch in this process (USE_TORCH=0)")
    return True
