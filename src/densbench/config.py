"""Where the configs live and the resolvers they use.

Run and sweep directories are named after the command-line overrides, not a timestamp, so that
rerunning the same command finds its earlier results (resume) and TensorBoard shows readable run
names.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONFIG_NAME = "config"
# options of the hydra command line that are not config overrides (some take a value)
_HYDRA_FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun"}
_NOT_IN_NAME = ("hydra.", "hydra/", "name=", "resume=", "+name=", "report.")


# the config keys that pick a replicate of one experiment (a training seed, a data draw, a split), not a
# different experiment: runs that differ only in them are averaged in one report row, share a dataset
# fingerprint, and train together as one stack
REPLICATION_KEYS = ("seed", "dataset.seed", "dataset.split")


def config_dir() -> str:
    """The packaged configs in an installed wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    repo = Path(__file__).resolve().parents[2] / "conf"
    if repo.is_dir():
        return str(repo)
    raise FileNotFoundError(f"densbench configs not found in {packaged} or {repo}")


NAME_LIMIT = 240  # characters of a run or sweep directory name (file systems allow 255 bytes)
# a separator that begins another key=value (a key holds no "__", so "a=x,y__b=z" splits only before b)
_ITEM_START = re.compile(r"(?:,|__)(?=[+~]?[A-Za-z_](?:[A-Za-z0-9.@/]|_(?!_))*=)")


KEY_SEP = "__"  # between the key=value items of a run or sweep name; "," only ever separates one key's values


def _safe(text: str) -> str:
    # brackets are shell globs: a list value [a,b] is written a,b; "__" inside an item would read as KEY_SEP
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9=,._+@-]+", "-", re.sub(r"[][]", "", text)).strip("-"))


def _shorten_value(item: str, keep: int = 12) -> str:
    key, sep, value = item.partition("=")
    if not sep or len(value) <= keep + 7:
        return item
    return f"{key}={value[:keep]}-{hashlib.sha1(value.encode()).hexdigest()[:6]}"


def slug(text: str, limit: int = NAME_LIMIT, sep: str = KEY_SEP) -> str:
    """A directory-safe name of key=value items that keeps every key readable.

    Short names stay as they are. A long one has its longest values cut to a prefix and a short hash,
    one at a time, until it fits (to 12 characters, then if need be to 3); keys are never dropped, so
    whatever varies in a sweep stays visible.
    Only a name whose keys alone are too long ends in a hash of the rest.
    """
    items = [_safe(i) for i in _ITEM_START.split(str(text)) if _safe(i)] or ["default"]
    for keep in (12, 3):  # first cut long values to a readable prefix, then any value to a stub
        while len(sep.join(items)) > limit:
            longest = max(range(len(items)), key=lambda i: len(items[i].partition("=")[2]))
            shorter = _shorten_value(items[longest], keep)
            if shorter == items[longest]:
                break
            items[longest] = shorter
    name = sep.join(items)
    if len(name) > limit:
        name = name[: limit - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def command_overrides(argv: list[str] | None = None) -> list[str]:
    """The config overrides typed on the command line (flags and hydra's own keys left out)."""
    argv = sys.argv[1:] if argv is None else argv
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok in _HYDRA_FLAGS_WITH_VALUE:
            skip = True
            continue
        if tok.startswith("-") or tok.startswith(_NOT_IN_NAME):
            continue
        out.append(tok)
    return out


def compose_config(overrides: list[str], hydra_node: bool = False) -> Any:
    """The densbench config for these overrides, as `python -m densbench <overrides>` composes it
    (for scripts, notebooks and tests; `hydra_node` keeps the hydra: section, e.g. sweeper params)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=CONFIG_NAME, overrides=list(overrides), return_hydra_config=hydra_node)


def is_unset(value: object) -> bool:
    """Whether a config value means 'not given' (null, empty, or the strings None/null from a command line)."""
    return value in (None, "", "None", "null")


def run_name(name: str | None) -> str:
    """`name` if given, else a slug of the command-line overrides."""
    if not is_unset(name):
        return slug(name)
    return slug(KEY_SEP.join(command_overrides())) if command_overrides() else "default"


def register_resolvers() -> None:
    """Register the resolvers the configs use (idempotent)."""
    if not OmegaConf.has_resolver("densbench.name"):
        # cached: jobs of a sweep inherit the main process's value even when run elsewhere
        OmegaConf.register_new_resolver("densbench.name", run_name, use_cache=True)
    if not OmegaConf.has_resolver("densbench.gpus"):
        # GPUs to ask a cluster for: the device count when the trainer runs on GPUs, else none
        OmegaConf.register_new_resolver("densbench.gpus", lambda acc, n: int(n) if acc in ("gpu", "cuda") else 0)
    if not OmegaConf.has_resolver("densbench.slug"):
        OmegaConf.register_new_resolver("densbench.slug", lambda s: slug(s) if s else "default")


register_resolvers()
