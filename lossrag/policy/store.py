"""Policy folders: a trained LossRAG policy as files, loaded by name (``policy="default"``) or path.

A folder holds three files and nothing executable:

- ``policy.json``: the policy's settings (the :class:`LossRAG` arguments and the prior's
  coefficients) and the shape of its correction network;
- ``correction.npz``: the correction's weights, read with ``numpy.load(allow_pickle=False)``, so
  loading never unpickles an object;
- ``card.json``: the card (:class:`PolicyCard`): format and embedding versions, provenance (recipe
  hash, code version, training problems, time), benchmark results, and the SHA-256 of the other two
  files, checked at every load.

Folders are written to a temporary sibling and renamed into place, so a crash leaves either the
previous policy or the new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal, Required

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

import lossrag
from lossrag._util import atomic_write_text, data_dir, suggest
from lossrag.embed import EMBED_VERSION
from lossrag.policy.lossrag import FEATURES, LossRAG
from lossrag.policy.net import Correction
from lossrag.policy.prior import Prior
from lossrag.weighting.base import register_method

__all__ = [
    "POLICY_FORMAT",
    "DefaultPolicy",
    "DefaultPolicyOnline",
    "PolicyCard",
    "correction_bytes",
    "load_policy",
    "policy_folder",
    "read_card",
    "read_correction",
    "record_benchmarks",
    "save_policy",
    "shipped_policies",
    "writable_folder",
]

#: Version of the folder layout and of the meaning of the correction's input features. Format 2
#: writes every setting, ``normalize_targets``, ``patience_on`` and ``spread`` included, checked
#: by type; a format-1 folder may lack those three (a missing ``normalize_targets`` then means
#: ``"auto"`` for a policy ``lossrag train`` wrote) and still loads (:func:`_arguments`).
POLICY_FORMAT = 2
_READABLE = (1, 2)
_FILES = ("policy.json", "correction.npz")


class PolicyCard(BaseModel):
    """What a policy folder says about itself.

    Attributes:
        name: The policy's name (its folder's name when shipped).
        format: :data:`POLICY_FORMAT` of the code that wrote it.
        embed_version: Loss-embedding version its features were computed with.
        features: Length of a candidate's feature vector.
        lossrag_version: Package version that wrote it.
        code: Fingerprint of the source that trained it.
        description: One line for ``lossrag policies list``.
        recipe: The training recipe, as validated.
        recipe_hash: SHA-256 of the recipe's canonical JSON.
        training: Problems, generations, time and the meta-objective's history summary.
        benchmarks: Results measured with the policy (free-form, e.g. Δm per problem).
        checksums: SHA-256 of ``policy.json`` and ``correction.npz``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    format: int
    embed_version: int
    features: int
    lossrag_version: str
    code: str = ""
    description: str = ""
    recipe: dict[str, Any] = {}
    recipe_hash: str = ""
    training: dict[str, Any] = {}
    benchmarks: dict[str, Any] = {}
    checksums: dict[str, str]

    @property
    def version(self) -> str | None:
        """The policy's version, as records name it: the first 12 hex digits of its
        ``policy.json``'s SHA-256 (``None`` for a card without that checksum)."""
        return self.checksums.get("policy.json", "")[:12] or None


class _Shape(BaseModel):
    """The correction network's shape in ``policy.json``."""

    model_config = ConfigDict(extra="forbid")

    hidden: int
    bound: float


@with_config(ConfigDict(extra="forbid"))
class _Settings(TypedDict, total=False):
    """What ``policy.json`` may hold, each setting of its :class:`LossRAG` argument's type,
    validated strictly (``"k": 4.5`` or ``"temperature": "hot"`` is an error naming the key, not
    a policy that runs with it); a setting left out takes the :class:`LossRAG` default."""

    k: int
    explore: int
    refresh_every: int
    retrieve_every: int
    retrieve_backoff: int
    patience: int
    patience_on: int
    spread: float
    floor: float
    temperature: float
    max_terms: int
    smoothing: float
    meta_lr: float
    rank_weight: float
    max_ratio: float
    scale_floor: float
    normalize_targets: bool | Literal["auto"]
    prior: Required[Prior]
    correction: Required[_Shape]


_SETTINGS = TypeAdapter(_Settings)


def _settings(policy: LossRAG) -> dict[str, Any]:
    """The constructor arguments that make ``policy`` (everything but the index and weights)."""
    return {
        "k": policy.k,
        "explore": policy.explore,
        "refresh_every": policy.refresh_every,
        "retrieve_every": policy.retrieve_every,
        "retrieve_backoff": policy.retrieve_backoff,
        "patience": policy.gates.patience,
        "floor": policy.floor,
        "temperature": policy.temperature,
        "max_terms": policy.max_terms,
        "smoothing": policy.smoothing,
        "meta_lr": policy.meta_lr,
        "rank_weight": policy.rank_weight,
        "max_ratio": policy.max_ratio,
        "scale_floor": policy.scale_floor,
        "patience_on": policy.gates.patience_on,
        "spread": policy.gates.spread,
        "normalize_targets": policy.normalize_targets,
        "prior": policy.prior.model_dump(),
        "correction": {"hidden": policy.correction.hidden, "bound": policy.correction.bound},
    }


def _settings_bytes(policy: LossRAG) -> bytes:
    """``policy.json`` of ``policy``, checked as :func:`load_policy` will read it, so that a
    policy that would not load again is refused when saved (``LossRAG(k=4.0)`` runs, but
    ``k`` is an int), naming the argument."""
    try:
        data = json.dumps(_settings(policy), indent=2, sort_keys=True).encode()
        _SETTINGS.validate_json(data, strict=True)
    except ValidationError as err:
        raise ValueError(
            f"save_policy: the policy's arguments would not load again: {_problems(err)}"
        ) from None
    except TypeError as err:  # e.g. a numpy integer
        raise ValueError(
            f"save_policy: the policy's arguments are not plain numbers: {err}"
        ) from None
    return data


def writable_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` as the absolute path that :func:`save_policy` may write (a symbolic link
    resolved: the policy goes where it points): absent, empty, or a policy folder holding only
    its policy's files (its card and the files the card lists), which it replaces. Raises
    ``FileExistsError`` for a file or a folder holding other files, which would be lost."""
    target = Path(os.path.realpath(folder))
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"Policy folder {folder}: a file of that name exists.")
    if not target.is_dir() or not any(target.iterdir()):
        return target
    if not (target / "card.json").is_file():
        raise FileExistsError(
            f"Policy folder {folder} exists and is not a policy folder (no card.json); its "
            "contents would be replaced. Choose a new or empty folder."
        )
    try:
        listed = json.loads((target / "card.json").read_text()).get("checksums", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        listed = {}
    own = {"card.json", *listed}
    others = sorted(p.name + "/" * p.is_dir() for p in target.iterdir() if p.name not in own)
    if others:
        raise FileExistsError(
            f"Policy folder {folder} holds files that are not its policy's ({', '.join(others)}); "
            "replacing the policy would lose them. Move them, or choose another folder."
        )
    return target


def save_policy(
    policy: LossRAG,
    folder: str | os.PathLike[str],
    *,
    name: str | None = None,
    description: str = "",
    recipe: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    benchmarks: dict[str, Any] | None = None,
    code: str = "",
    extra: dict[str, bytes] | None = None,
) -> PolicyCard:
    """Write ``policy`` (settings, correction weights, card) to ``folder``, atomically;
    ``extra`` files (a training plot, say) go beside them, checksummed too. The card is named
    ``name`` (default: the folder's name). ``folder`` is absent, empty, or a policy folder
    (:func:`writable_folder`)."""
    target = writable_folder(folder)
    recipe = recipe or {}
    files = {"policy.json": _settings_bytes(policy)}
    files["correction.npz"] = correction_bytes(policy.correction)
    files.update(extra or {})
    card = PolicyCard(
        name=name or target.name,
        format=POLICY_FORMAT,
        embed_version=EMBED_VERSION,
        features=FEATURES,
        lossrag_version=lossrag.__version__,
        code=code,
        description=description,
        recipe=recipe,
        recipe_hash=hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(),
        training=training or {},
        benchmarks=benchmarks or {},
        checksums={n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
    )
    files["card.json"] = card.model_dump_json(indent=2).encode()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        staging.chmod(0o755)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return card


def record_benchmarks(folder: str | os.PathLike[str], benchmarks: dict[str, Any]) -> PolicyCard:
    """Write ``benchmarks`` (results measured with the policy) into a checked policy's card."""
    card = read_card(folder)
    card.benchmarks = benchmarks
    atomic_write_text(Path(folder) / "card.json", card.model_dump_json(indent=2))
    return card


def shipped_policies() -> list[Path]:
    """The policy folders shipped with LossRAG (``policies/*`` holding a card)."""
    root = data_dir("policies")
    return sorted(p for p in root.iterdir() if (p / "card.json").is_file())


def policy_folder(source: str | os.PathLike[str]) -> Path:
    """The folder of ``source``: a shipped policy's name (``"default"``, a string; it wins over
    a folder of that name in the working directory, which ``"./default"`` or a ``Path`` names)
    or a path."""
    shipped = {p.name: p for p in shipped_policies()}
    if isinstance(source, str) and source in shipped:
        return shipped[source]
    path = Path(source)
    if path.is_dir():
        return path
    known = ", ".join(shipped) or "none"
    try:
        here = [p.name for p in Path().iterdir() if (p / "card.json").is_file()]
    except OSError:  # an unreadable working directory
        here = []
    close = suggest(path.name, [*shipped, *here])
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise FileNotFoundError(
        f"Policy {str(source)!r} is neither a folder nor a shipped policy (shipped: {known}).{hint}"
    )


def _work_folder_hint(folder: Path) -> str:
    """Where the policy is, if ``folder`` is a ``lossrag train`` work folder."""
    try:
        out = json.loads((folder / "checkpoint.json").read_text()).get("out")
    except (OSError, ValueError, AttributeError):
        return ""
    where = out if isinstance(out, str) else "its --out folder"
    return f": it is a `lossrag train` work folder (checkpoints, log, plot) writing {where}"


def read_card(folder: str | os.PathLike[str]) -> PolicyCard:
    """The card of a policy folder, after checking its files against the card's checksums and
    its versions against this LossRAG's."""
    folder = Path(folder)
    card_path = folder / "card.json"
    try:
        card = PolicyCard.model_validate_json(card_path.read_bytes())
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"Policy folder {folder} has no card.json{_work_folder_hint(folder)}."
        ) from err
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(
            f"Policy folder {folder}: card.json is not a valid card ({problems})."
        ) from None
    if card.format not in _READABLE or (card.embed_version, card.features) != (
        EMBED_VERSION,
        FEATURES,
    ):
        raise ValueError(
            f"Policy {card.name!r} ({folder}) was written by LossRAG {card.lossrag_version} as "
            f"policy format {card.format}, embedding version {card.embed_version}, {card.features} "
            f"features; this LossRAG {lossrag.__version__} reads policy format "
            f"{' or '.join(map(str, _READABLE))}, "
            f"embedding version {EMBED_VERSION}, {FEATURES} features. Retrain it with "
            "`lossrag train`."
        )
    for name in sorted({*_FILES, *card.checksums}):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"Policy {card.name!r} ({folder}): {name} is missing.")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != card.checksums.get(name):
            raise ValueError(
                f"Policy {card.name!r} ({folder}): {name} does not match the checksum in its card "
                "(the file was altered or is incomplete)."
            )
    return card


def _arguments(source: str | os.PathLike[str]) -> tuple[dict[str, Any], PolicyCard]:
    """The :class:`LossRAG` arguments (settings and trained correction) of a saved policy, and
    its card; its target normalisation, the one it was trained with, under
    ``"normalize_targets"`` (for a format-1 folder, written before it was saved: ``"auto"`` if
    ``lossrag train`` wrote it, as it trains so, else ``False``)."""
    folder = policy_folder(source)
    card = read_card(folder)
    path = folder / "policy.json"
    try:
        settings: dict[str, Any] = dict(_SETTINGS.validate_json(path.read_bytes(), strict=True))
    except ValidationError as err:
        raise ValueError(
            f"Policy folder {folder}: policy.json does not hold a policy's settings (a JSON "
            f"object of LossRAG arguments with 'prior' and 'correction'): {_problems(err)}"
        ) from None
    shape: _Shape = settings.pop("correction")
    if "normalize_targets" not in settings and card.format == 1:  # written before it was saved
        settings["normalize_targets"] = "auto" if card.recipe else False
    correction = Correction(FEATURES, hidden=shape.hidden, bound=shape.bound)
    read_correction(folder / "correction.npz", correction)
    return {**settings, "correction": correction}, card


def _problems(err: ValidationError) -> str:
    """The validation errors of ``policy.json``, one clause each."""
    return "; ".join(dict.fromkeys(_problem(e) for e in err.errors()))


def _problem(error: Any) -> str:
    """One validation error of ``policy.json`` as ``key: what was expected (got value)``."""
    where = ".".join(str(part) for part in error["loc"])
    if not where:  # the file as a whole (not JSON, not an object)
        return str(error["msg"])
    if error["type"] == "missing":
        return f"{where}: missing"
    if error["loc"][0] == "normalize_targets":  # one line for the union's two branches
        return f"normalize_targets: true, false or 'auto' (got {error['input']!r})"
    return f"{where}: {error['msg']} (got {error['input']!r})"


def correction_bytes(correction: Correction) -> bytes:
    """The weights of ``correction`` as an ``.npz`` file (plain arrays, nothing pickled)."""
    buffer = io.BytesIO()
    state = correction.state_dict()
    arrays: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in state.items()}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_correction(path: str | os.PathLike[str], correction: Correction) -> Correction:
    """Load the weights of an ``.npz`` file (:func:`correction_bytes`) into ``correction``, without
    unpickling; a file that does not fit its network is a ValueError."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            state = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"Policy file {path} is not a correction's weights (an .npz of plain arrays): {err}"
        ) from err
    try:
        correction.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"Policy file {path} does not fit its network: {err}") from err
    return correction


def load_policy(source: str | os.PathLike[str] = "default", **overrides: Any) -> LossRAG:
    """A :class:`LossRAG` with a saved policy's settings and correction; ``overrides`` replace
    settings (e.g. ``total_steps``). The shipped ``"default"`` is a :class:`DefaultPolicy`
    (which also chooses its target normalisation). It carries its card's name and version
    (:attr:`LossRAG.source`), which runs record it by; with overrides, the name says which
    settings changed and the version is ``None``."""
    if isinstance(source, str) and source == "default":
        policy: LossRAG = DefaultPolicy(**overrides)
        card = read_card(policy_folder(source))
    else:
        arguments, card = _arguments(source)
        try:
            policy = LossRAG(**{**arguments, **overrides})
        except (TypeError, ValueError) as err:
            if overrides:  # blame the file only if it fails on its own
                try:
                    LossRAG(**arguments)
                except (TypeError, ValueError):
                    pass
                else:
                    raise
            raise ValueError(
                f"Policy {str(source)!r}: the settings of its policy.json do not make a LossRAG "
                f"policy: {err}"
            ) from err
    # what runs record it by: with overrides it is no longer the policy of that version
    changed = f" ({', '.join(sorted(overrides))} changed)" if overrides else ""
    policy.source = (card.name + changed, None if overrides else card.version)
    return policy


@register_method
class DefaultPolicy(LossRAG):
    """The shipped policy ``policies/default``, frozen (``policy="lossrag-default"``; the same
    as ``policy="default"``, under the name the benchmark runs it). Its ``policy.json`` sets
    ``normalize_targets="auto"``: targets far from standard units are normalised (PopArt), the
    others left as they are (measured in ``benchmarks/targets``)."""

    name = "lossrag-default"
    #: The shipped policy folder it is made of (its card versions the runs' records).
    shipped = "default"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**{**_arguments("default")[0], **overrides})


@register_method
class DefaultPolicyOnline(DefaultPolicy):
    """``policies/default`` adapting online from a query stream (``wrap(..., query=...)``)."""

    name = "lossrag-default-online"
    needs_query = True
