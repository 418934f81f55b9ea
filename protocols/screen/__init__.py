"""Federated weight of evidence and information value for every tag in one pass (the ``screen`` job).

The bank's labels travel only as randomised, encrypted per-row values (:mod:`protocols.screen.rr`,
:mod:`protocols.screen.encoding`); the platform sums them per bin of its features with additions only
(:mod:`protocols.screen.platform`, on the HE seam's encrypted histogram); the bank decrypts bin-level counts,
checks them and computes WOE and IV (:mod:`protocols.screen.bank`, :mod:`protocols.screen.woe`).
"""

from protocols.screen.bank import ScreenOutcome, run_bank_screen
from protocols.screen.params import SESSION_KIND, VERSION, ScreenParams
from protocols.screen.platform import PlatformScreenHandler, ScreenFeatures
from protocols.screen.woe import FeatureIV, band

__all__ = ["SESSION_KIND", "VERSION", "FeatureIV", "PlatformScreenHandler", "ScreenFeatures", "ScreenOutcome",
           "ScreenParams", "band", "run_bank_screen"]
