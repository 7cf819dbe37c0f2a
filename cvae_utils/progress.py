"""Progress of long runs, as log records (placeholder: replaced by the build-move branch)."""
from __future__ import annotations

import logging

logger = logging.getLogger("cvae_utils.progress")


def epoch_done(desc, epoch, max_epochs, val_loss, epoch_seconds, best_epoch):
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s: epoch %d/%d, validation loss %.2f (best epoch %d)", desc, epoch,
                    max_epochs, val_loss, best_epoch)
