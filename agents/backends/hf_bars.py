"""Hugging Face's tqdm bars ("Loading weights", "Converting and de-quantizing GGUF tensors").

In a terminal they redraw one line; in a log (``| tee``, CI, nohup) every redraw becomes
text. :func:`quiet_hf_bars_outside_terminal` turns them off when stderr is not a terminal.
It is called before models load (the ``hf`` backends, the GGUF conversion, training) and
once at ``vragent`` start-up, so the libraries imported later read the variables too.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

#: Read by huggingface_hub and datasets when they are imported.
ENV_VARS = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def quiet_hf_bars_outside_terminal(stream: TextIO | None = None) -> bool:
    """Disable Hugging Face progress bars when ``stream`` (default stderr) is no terminal.

    A user's own ``HF_HUB_DISABLE_PROGRESS_BARS=0`` (bars wanted in the log) wins.

    Args:
        stream: where the bars would draw.

    Returns:
        Whether the bars were turned off.
    """
    stream = stream if stream is not None else sys.stderr
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream: not a terminal
        terminal = False
    wanted = os.environ.get(ENV_VARS[0], "1").strip().lower() in ("0", "false", "no", "off")
    if terminal or wanted:
        return False
    for name in ENV_VARS:
        os.environ.setdefault(name, "1")
    # Libraries imported before now read the variables already: tell them directly. Only
    # those already imported, so that a fast command never pays for importing transformers.
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import disable_progress_bars as disable_datasets_bars

        disable_datasets_bars()
    return True
