"""Readable generated names for sandboxes created without one: ``adjective-noun``, the form the
reference gives them, so a person can say and type the name a CLI printed.

The first attempt is the two words alone; after a collision (the insert's MUST_CREATE refused
the name) a short random suffix follows them. Uniqueness is the database's, never this
module's: a generated name is only a candidate for the insert. Every name is at most
``MAX_GENERATED_NAME_LEN`` characters, lowercase letters, digits and dashes, so it is a valid
DNS label and stays short enough to route by (the reference's limit).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Sequence

MAX_GENERATED_NAME_LEN = 19
SUFFIX_LEN = 4
NAME_ATTEMPTS = 4
"""Inserts tried for a sandbox created without a name: the plain pair, then suffixed pairs."""

ADJECTIVES = (
    "able", "amber", "ample", "azure", "bold", "brave", "brisk", "calm", "civil", "clear",
    "cosmic", "crisp", "dapper", "deft", "eager", "early", "easy", "epic", "fair", "fancy",
    "fast", "fine", "firm", "fluent", "fond", "frank", "fresh", "gentle", "giving", "glad",
    "golden", "grand", "happy", "hardy", "honest", "humble", "jolly", "just", "keen", "kind",
    "lively", "loyal", "lucid", "lucky", "mellow", "merry", "mighty", "modest", "neat", "nimble",
    "noble", "novel", "plucky", "polite", "proud", "quick", "quiet", "rapid", "ready", "robust",
    "rosy", "royal", "sharp", "shiny", "silent", "sleek", "smart", "snappy", "solid", "steady",
    "sunny", "super", "sure", "swift", "tidy", "tough", "true", "upbeat", "valid", "vivid",
    "warm", "wise", "witty", "zesty",
)  # fmt: skip
NOUNS = (
    "alpaca", "badger", "beaver", "bison", "bobcat", "camel", "cobra", "condor", "coyote",
    "crane", "dingo", "dolphin", "donkey", "eagle", "egret", "falcon", "ferret", "finch",
    "gecko", "gibbon", "goose", "gopher", "heron", "hornet", "ibis", "iguana", "impala",
    "jackal", "jaguar", "koala", "lemur", "lizard", "llama", "lynx", "magpie", "marmot",
    "marten", "mole", "moose", "newt", "ocelot", "osprey", "otter", "owl", "panda", "parrot",
    "pelican", "penguin", "puffin", "python", "quail", "rabbit", "raven", "salmon", "seal",
    "shrew", "skunk", "sloth", "snail", "sparrow", "spider", "squid", "stork", "swan",
    "tapir", "tiger", "toucan", "trout", "turtle", "viper", "walrus", "weasel", "whale",
    "wombat", "yak", "zebra",
)  # fmt: skip

Choose = Callable[[Sequence[str]], str]


def readable_name(attempt: int, choose: Choose = secrets.choice) -> str:
    """The candidate name for insert ``attempt`` (0 first): ``adjective-noun``, and from the
    second attempt on ``adjective-noun-xxxx``."""
    name = f"{choose(ADJECTIVES)}-{choose(NOUNS)}"
    if attempt > 0:
        alphabet = string.ascii_lowercase + string.digits
        name += "-" + "".join(secrets.choice(alphabet) for _ in range(SUFFIX_LEN))
    return name
