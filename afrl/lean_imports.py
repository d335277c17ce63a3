"""Keep scikit-learn and SciPy out of a serving process: about 100 MB of RSS that serving never uses.

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
"""

from __future__ import annotations

import logging

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
