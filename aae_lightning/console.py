"""What train.py and evaluate.py keep off the console: messages of other libraries that tell a user of this
project nothing about a run. Each filter names one message and the module it comes from; everything else,
every warning included, is shown as those libraries print it."""

from __future__ import annotations

import logging
import warnings

#: the logger through which Lightning's `rank_zero_info` messages reach the console
LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"
#: the start of Lightning's advertisement for its cloud logger, printed by every Trainer without a LitLogger
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


def _not_the_litlogger_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LITLOGGER_TIP)


def quiet_console() -> None:
    """Install the filters (once, however often it is called)."""
    # Lightning 2.6's CombinedLoader still builds `LeafSpec()`, which torch deprecates: advice for Lightning's
    # developers, printed at the start of every fit, validation and test
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )
    logging.getLogger(LIGHTNING_INFO_LOGGER).addFilter(_not_the_litlogger_tip)
