"""QM9 (130,831 molecules) from the PyPI package ``qm9pack``, as fixed-length descriptors.

The package's CSV files are read directly (its ``get_data()`` imports ``pkg_resources`` and fails
with recent setuptools). Each molecule becomes 35 features: the eigenvalues of its Coulomb matrix
(Rupp et al. 2012; atomic units, sorted by decreasing magnitude, zero-padded to 29), its counts of
H, C, N, O and F, and its atom count. The targets are the 11 of Nash-MTL / FAMO in the units of
PyTorch Geometric's QM9 (eV for energies; U0, U, H and G as atomization energies).

The features take about half a minute to build, so they are cached on disk (see
:mod:`lossrag.bench.data.cache`), keyed by :data:`FEATURE_VERSION` and the CSV files' sizes and
modification times. The CSV folder is ``$LOSSRAG_QM9`` if set, else the installed ``qm9pack``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossrag.bench.data._source import MissingDataError, env_dir
from lossrag.bench.data.cache import cached_arrays

__all__ = [
    "ATOMREF_HARTREE",
    "FEATURE_VERSION",
    "HARTREE_EV",
    "MAX_ATOMS",
    "QM9_ENV",
    "QM9_TARGETS",
    "QM9Raw",
    "coulomb_features",
    "load_qm9_arrays",
    "qm9_csv_files",
    "read_qm9_csv",
]

#: Environment variable naming a folder of ``qm9_part*.csv`` files.
QM9_ENV = "LOSSRAG_QM9"
#: Version of the feature code; bump it when the features change, so caches rebuild.
FEATURE_VERSION = "qm9-cm35-v1"
#: Most atoms in a QM9 molecule (the length of the eigenvalue block).
MAX_ATOMS = 29
#: Hartree in eV (CODATA 2018).
HARTREE_EV = 27.211386245988
_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_ELEMENTS = tuple(_Z)
#: Isolated-atom energies (B3LYP/6-31G(2df,p), hartree) of H, C, N, O, F for U0, U, H and G.
ATOMREF_HARTREE: dict[str, tuple[float, ...]] = {
    "u0": (-0.500273, -37.846772, -54.583861, -75.064579, -99.718730),
    "u": (-0.498857, -37.845355, -54.582445, -75.063163, -99.717314),
    "h": (-0.497912, -37.844411, -54.581501, -75.062219, -99.716370),
    "g": (-0.510927, -37.861317, -54.598897, -75.079532, -99.733544),
}
#: Target name -> (CSV column, factor to PyG units, atomization reference or None).
QM9_TARGETS: dict[str, tuple[str, float, str | None]] = {
    "mu": ("Dipole_debye", 1.0, None),
    "alpha": ("Polarizability_bohr3", 1.0, None),
    "homo": ("HOMO_au", HARTREE_EV, None),
    "lumo": ("LUMO_au", HARTREE_EV, None),
    "r2": ("R2_bohr2", 1.0, None),
    "zpve": ("ZPVE_au", HARTREE_EV, None),
    "u0": ("InternalEnergy_0K_au", HARTREE_EV, "u0"),
    "u": ("InternalEnergy_298K_au", HARTREE_EV, "u"),
    "h": ("Enthalphy_298K_au", HARTREE_EV, "h"),
    "g": ("GibbsFreeEnergy_298K_au", HARTREE_EV, "g"),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, None),
}
_STRUCTURE = ("N_atoms", "Stoichiometry", "Elements", "XYZ_Ang")
_STRIP = {ord(c): None for c in "[]' \""}
_BOHR_PER_ANGSTROM = 1 / 0.529177210903
_INSTALL = (
    "QM9 comes from the PyPI package qm9pack: `pip install qm9pack==1.0.3` (104 MB download; or "
    f"`pip install 'lossrag[bench]'`), or set {QM9_ENV} to a folder of qm9_part*.csv files."
)


def qm9_csv_files() -> list[Path]:
    """The ``qm9_part*.csv`` files, from ``$LOSSRAG_QM9`` or the installed ``qm9pack``.

    Raises:
        MissingDataError: Neither is available; the message says how to install qm9pack.
    """
    folder = env_dir(QM9_ENV)
    if folder is None:
        spec = importlib.util.find_spec("qm9pack")  # locates the package without importing it
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise MissingDataError(f"qm9pack is not installed. {_INSTALL}")
        folder = Path(locations[0]) / "data"
    files = sorted(folder.glob("qm9_part*.csv"))
    if not files:
        raise MissingDataError(f"No qm9_part*.csv files in {folder}. {_INSTALL}")
    return files


def _floats(text: str) -> np.ndarray:
    return np.array(text.replace("[", "").replace("]", "").split(","), dtype=np.float64)


def _column_index(header: list[str], path: Path) -> dict[str, int]:
    index = {name: i for i, name in enumerate(header)}
    needed = [*_STRUCTURE, *(column for column, _, _ in QM9_TARGETS.values())]
    missing = [name for name in needed if name not in index]
    if missing:
        raise ValueError(f"{path}: not a qm9pack CSV, columns {missing} are missing.")
    return index


@dataclass(frozen=True)
class QM9Raw:
    """Parsed QM9 molecules.

    Attributes:
        z: Per molecule, its atomic numbers ``(n,)``.
        xyz: Per molecule, its atom positions ``(n, 3)`` in Å.
        counts: ``(N, 5)`` counts of H, C, N, O, F.
        targets: ``(N, 11)`` targets in PyG units, columns in the order of :data:`QM9_TARGETS`.
    """

    z: list[np.ndarray]
    xyz: list[np.ndarray]
    counts: np.ndarray
    targets: np.ndarray


def read_qm9_csv(paths: Iterable[Path]) -> QM9Raw:
    """Parse qm9pack CSV files (only the structure and target columns are read).

    Raises:
        ValueError: A file lacks a column or a row is malformed (the file and line are named).
    """
    z: list[np.ndarray] = []
    xyz: list[np.ndarray] = []
    counts: list[list[int]] = []
    targets: list[list[float]] = []
    for path in paths:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            col = _column_index(next(reader, []), path)
            for line, row in enumerate(reader, start=2):
                try:
                    atoms = row[col["Elements"]].translate(_STRIP).split(",")
                    z.append(np.array([_Z[a] for a in atoms], dtype=np.float64))
                    xyz.append(_floats(row[col["XYZ_Ang"]]).reshape(len(atoms), 3))
                    counts.append([int(v) for v in _floats(row[col["Stoichiometry"]])])
                    targets.append([float(row[col[c]]) for c, _, _ in QM9_TARGETS.values()])
                except (ValueError, KeyError, IndexError) as err:
                    raise ValueError(f"{path}, line {line}: malformed QM9 row ({err}).") from err
    raw = np.array(targets, dtype=np.float64).reshape(-1, len(QM9_TARGETS))
    count_array = np.array(counts, dtype=np.float64).reshape(-1, len(_ELEMENTS))
    return QM9Raw(z, xyz, count_array, _to_pyg_units(raw, count_array))


def _to_pyg_units(raw: np.ndarray, counts: np.ndarray) -> np.ndarray:
    out = np.empty_like(raw)
    for j, (_, factor, ref) in enumerate(QM9_TARGETS.values()):
        base = counts @ np.array(ATOMREF_HARTREE[ref]) if ref else 0.0
        out[:, j] = (raw[:, j] - base) * factor
    return out


def coulomb_features(z: list[np.ndarray], xyz: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """The 35 descriptors per molecule (float32), batched by atom count.

    Coulomb matrix ``C_ii = Z_i^2.4 / 2``, ``C_ij = Z_i Z_j / |R_i − R_j|`` (bohr); its eigenvalues
    sorted by decreasing magnitude and zero-padded to :data:`MAX_ATOMS`, then the five element
    counts and the atom count.
    """
    sizes = np.array([len(a) for a in z])
    if sizes.size and sizes.max() > MAX_ATOMS:
        raise ValueError(f"QM9: a molecule has {sizes.max()} atoms; at most {MAX_ATOMS} supported.")
    eig = np.zeros((len(z), MAX_ATOMS))
    for n in np.unique(sizes):
        rows = np.flatnonzero(sizes == n)
        charges = np.stack([z[i] for i in rows])
        pos = np.stack([xyz[i] for i in rows]) * _BOHR_PER_ANGSTROM
        dist = np.linalg.norm(pos[:, :, None, :] - pos[:, None, :, :], axis=-1)
        outer = charges[:, :, None] * charges[:, None, :]
        eye = np.eye(n, dtype=bool)[None]
        matrix = np.where(eye, 0.5 * charges[:, :, None] ** 2.4, outer / np.where(eye, 1.0, dist))
        values = np.linalg.eigvalsh(matrix)
        order = np.argsort(-np.abs(values), axis=1)
        eig[rows, :n] = np.take_along_axis(values, order, axis=1)
    return np.concatenate([eig, counts, sizes[:, None]], axis=1).astype(np.float32)


def _fingerprint(files: list[Path]) -> str:
    return ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def load_qm9_arrays() -> dict[str, np.ndarray]:
    """``{"features": (N, 35) float32, "targets": (N, 11) float64}`` (PyG units), cached on disk.

    Raises:
        MissingDataError: qm9pack is not installed and ``$LOSSRAG_QM9`` is not set.
    """
    files = qm9_csv_files()

    def build() -> dict[str, np.ndarray]:
        parsed = read_qm9_csv(files)
        features = coulomb_features(parsed.z, parsed.xyz, parsed.counts)
        return {"features": features, "targets": parsed.targets}

    # the unit constants are part of the key: changing one must not serve stale targets
    constants = repr((HARTREE_EV, ATOMREF_HARTREE, QM9_TARGETS, _BOHR_PER_ANGSTROM))
    fingerprint = _fingerprint(files) + "|" + hashlib.sha256(constants.encode()).hexdigest()[:12]
    return cached_arrays("qm9", FEATURE_VERSION, build, fingerprint=fingerprint)
