"""The SV-UAMC options that the commands running it share (``UAMCParams.from_options``
reads them)."""

from __future__ import annotations

from django.core.management.base import CommandParser

from seke_app.engine.uamc import STRATEGIES, UAMCParams


def add_uamc_arguments(parser: CommandParser) -> None:
    defaults = UAMCParams()
    parser.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy)
    parser.add_argument("--k0", type=int, default=defaults.k0)
    parser.add_argument("--kmax", type=int, default=defaults.kmax)
    parser.add_argument("--step", type=int, default=defaults.step)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--review-threshold", type=float, default=defaults.review_threshold)
    parser.add_argument(
        "--no-futility",
        dest="futility",
        action="store_false",
        help="keep sampling up to kmax even when the next round cannot settle a split",
    )
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip self-verification"
    )
