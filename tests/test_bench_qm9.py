"""QM9 from qm9pack-format CSVs: parsing, descriptors, units, caching and the qm9 problems."""

from __future__ import annotations

import importlib.util
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lossrag.bench.data import MissingDataError
from lossrag.bench.data import qm9 as qm9data
from lossrag.bench.data.cache import CACHE_ENV, cache_dir
from lossrag.bench.problems import get_problem
from lossrag.bench.problems.qm9 import METRIC_UNITS

HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,"
    "Harmonic_Freq_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,"
    "LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,"
    "Enthalphy_298K_au,GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
)
# The first three molecules of qm9pack 1.0.3, verbatim (CH4, NH3, H2O).
REAL_ROWS = [
    '"dsgdb9nsd_000001.xyz",1,"C","InChI=1S/CH4/h1H4",5,"[4,1,0,0,0]","[\'C\',\'H\',\'H\',\'H\',\'H\']","[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],[-0.5238136345,1.4379326443,0.9063972942]]","[-0.535689,0.133921,0.133922,0.133923,0.133923]","[1341.307,1341.3284,1341.365,1562.6731,1562.7453,3038.3205,3151.6034,3151.6788,3151.7078]",157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,-40.475117,-40.498597,6.469',
    '"dsgdb9nsd_000002.xyz",2,"N","InChI=1S/H3N/h1H3",4,"[3,0,1,0,0]","[\'N\',\'H\',\'H\',\'H\']","[[-0.0404260543,1.0241077531,0.0625637998],[0.0172574639,0.0125452063,-0.0273771593],[0.9157893661,1.3587451948,-0.0287577581],[-0.5202777357,1.3435321258,-0.7755426124]]","[-0.707143,0.235712,0.235712,0.23572]","[1103.8733,1684.1158,1684.3072,3458.7145,3575.2414,3575.3343]",293.60975,293.54111,191.39397,1.6256,9.46,-0.257,0.0829,0.3399,26.1563,0.034358,-56.525887,-56.523026,-56.522082,-56.544961,6.316',
    '"dsgdb9nsd_000003.xyz",3,"O","InChI=1S/H2O/h1H2",3,"[2,0,0,1,0]","[\'O\',\'H\',\'H\']","[[-0.0343604951,0.9775395708,0.0076015923],[0.0647664923,0.0205721989,0.0015346341],[0.8717903737,1.3007924048,0.0006931336]]","[-0.589706,0.294853,0.294853]","[1671.4222,3803.6305,3907.698]",799.58812,437.90386,282.94545,1.8511,6.31,-0.2928,0.0687,0.3615,19.0002,0.021375,-76.404702,-76.401867,-76.400922,-76.422349,6.002',
]
ELEMENTS = "HCNOF"


def synthetic_row(i: int, rng: np.random.Generator) -> str:
    """A made-up molecule in the qm9pack row format (atoms 1.2 Å apart on a jittered grid)."""
    n = int(rng.integers(3, 10))
    atoms = ["C", *(str(rng.choice(list(ELEMENTS))) for _ in range(n - 1))]
    grid = np.stack(np.meshgrid(range(3), range(3), range(2)), -1).reshape(-1, 3)[:n]
    xyz = grid * 1.2 + rng.normal(0, 0.05, (n, 3))
    xyz[0] = [0.0, 1.0, 0.0]  # qm9pack writes such values as "0." and "1."
    coords = ",".join("[" + ",".join(_fmt(v) for v in p) + "]" for p in xyz)
    counts = ",".join(str(atoms.count(e)) for e in ELEMENTS)
    names = ",".join(f"'{a}'" for a in atoms)
    targets = ",".join(f"{v:.6f}" for v in rng.normal(0, 1, 15))
    return (
        f'"dsgdb9nsd_{i:06d}.xyz",{i},"C","InChI=1S/x",{n},"[{counts}]","[{names}]",'
        f'"[{coords}]","[0.1]","[100.0]",{targets}'
    )


def _fmt(value: float) -> str:
    return f"{value:.0f}." if float(value).is_integer() else f"{value:.10f}"


def write_fake_qm9(folder: Path, n: int = 120) -> Path:
    rng = np.random.default_rng(0)
    rows = REAL_ROWS + [synthetic_row(i, rng) for i in range(4, n + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    (folder / "qm9_part1.csv").write_text("\n".join([HEADER, *rows[:half]]) + "\n")
    (folder / "qm9_part2.csv").write_text("\n".join([HEADER, *rows[half:]]) + "\n")
    return folder


@pytest.fixture
def fake_qm9(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = write_fake_qm9(tmp_path / "qm9")
    monkeypatch.setenv(qm9data.QM9_ENV, str(folder))
    return folder


def coulomb_reference(z: np.ndarray, xyz_angstrom: np.ndarray) -> np.ndarray:
    """The Coulomb matrix with explicit loops (bohr)."""
    r = xyz_angstrom / 0.529177210903
    n = len(z)
    m = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            m[i, j] = 0.5 * z[i] ** 2.4 if i == j else z[i] * z[j] / np.linalg.norm(r[i] - r[j])
    return m


def test_parse_real_rows_units_and_features(fake_qm9: Path) -> None:
    raw = qm9data.read_qm9_csv(qm9data.qm9_csv_files())
    assert len(raw.z) == 120 and raw.targets.shape == (120, 11)
    names = list(qm9data.QM9_TARGETS)
    ch4, h2o = raw.targets[0], raw.targets[2]
    # U0 atomization of CH4 by hand: -40.47893 - (4 * -0.500273 - 37.846772) hartree, in eV
    assert ch4[names.index("u0")] == pytest.approx(-0.631066 * 27.211386245988, rel=1e-9)
    assert ch4[names.index("homo")] == pytest.approx(-0.3877 * 27.211386245988)
    assert ch4[names.index("mu")] == 0.0 and ch4[names.index("cv")] == 6.469
    assert h2o[names.index("alpha")] == 6.31
    features = qm9data.coulomb_features(raw.z, raw.xyz, raw.counts)
    assert features.shape == (120, 35) and features.dtype == np.float32
    expected = np.linalg.eigvalsh(coulomb_reference(np.array([8.0, 1, 1]), raw.xyz[2]))
    expected = expected[np.argsort(-np.abs(expected))]
    np.testing.assert_allclose(features[2, :3], expected, rtol=1e-5)
    assert np.all(features[2, 3:29] == 0)
    assert features[2, 29:].tolist() == [2, 0, 0, 1, 0, 3]  # H C N O F counts, atoms
    assert features[0, 29:].tolist() == [4, 1, 0, 0, 0, 5]


def test_malformed_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "qm9_part1.csv").write_text("XYZ_file,Index\n1,2\n")
    with pytest.raises(ValueError, match=r"columns .* are missing"):
        qm9data.read_qm9_csv([tmp_path / "qm9_part1.csv"])
    broken = REAL_ROWS[0].replace("'H'", "'Xx'", 1)
    (tmp_path / "qm9_part2.csv").write_text(HEADER + "\n" + broken + "\n")
    with pytest.raises(ValueError, match=r"qm9_part2\.csv, line 2"):
        qm9data.read_qm9_csv([tmp_path / "qm9_part2.csv"])


def test_missing_qm9pack_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(qm9data.QM9_ENV, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDataError, match=r"pip install qm9pack==1\.0\.3"):
        qm9data.qm9_csv_files()
    with pytest.raises(MissingDataError, match="qm9pack"):
        get_problem("qm9").load(0)


def test_empty_folder_is_a_missing_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(qm9data.QM9_ENV, str(tmp_path))
    with pytest.raises(MissingDataError, match="No qm9_part"):
        qm9data.qm9_csv_files()


def test_features_are_cached_and_corrupt_cache_rebuilt(fake_qm9: Path) -> None:
    first = qm9data.load_qm9_arrays()
    files = list(cache_dir().glob("qm9-*.npz"))
    assert len(files) == 1
    calls = []
    original = qm9data.read_qm9_csv
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qm9data, "read_qm9_csv", lambda paths: calls.append(1) or original(paths))
        cached = qm9data.load_qm9_arrays()
        assert not calls  # served from the cache
        # overwrite 64 bytes inside the stored feature array (zip member data, past its npy
        # header) with 0xFF: zeros could land on the zero padding of the eigenvalues
        with zipfile.ZipFile(files[0]) as archive:
            info = archive.getinfo("features.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
        data = bytearray(files[0].read_bytes())
        data[start : start + 64] = b"\xff" * 64
        files[0].write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="rebuilding"):
            rebuilt = qm9data.load_qm9_arrays()
        assert calls == [1]
    for arrays in (cached, rebuilt):
        assert np.array_equal(arrays["features"], first["features"])
        assert np.array_equal(arrays["targets"], first["targets"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qm9data.load_qm9_arrays()  # the rebuilt file is valid again


def test_new_source_files_rebuild(fake_qm9: Path) -> None:
    qm9data.load_qm9_arrays()
    write_fake_qm9(fake_qm9, n=60)
    assert len(qm9data.load_qm9_arrays()["features"]) == 60


@pytest.mark.parametrize("name", ["qm9", "qm9-raw"])
def test_problem_contract_and_units(fake_qm9: Path, name: str) -> None:
    p = get_problem(name, n_train=60, n_val=20, n_test=20)
    splits = p.load(0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 20, 20)
    assert splits.train.x.shape == (60, 35)
    model = p.build_model(0)
    out = model(splits.train.x[:4])
    for task in p.tasks:
        task.check(out[task.name], splits.train.y[task.name][:4])
    assert p.scored == list(qm9data.QM9_TARGETS)
    assert torch.allclose(splits.train.x.mean(0), torch.zeros(35), atol=1e-5)
    raw_targets = qm9data.load_qm9_arrays()["targets"]
    homo = splits.test.y["homo"] * splits.test.metric_scale["homo"]
    if name == "qm9":
        assert splits.train.y["u0"].std().item() == pytest.approx(1.0, rel=0.05)
        assert splits.test.metric_scale["homo"] > 1.0  # std in eV times 1000 (meV)
    else:
        assert splits.test.metric_scale == METRIC_UNITS
        in_ev = homo.numpy()[:, None] / 1000
        homo_column = raw_targets[None, :, list(qm9data.QM9_TARGETS).index("homo")]
        assert np.isclose(in_ev, homo_column, rtol=1e-5).any(axis=1).all()
    scores = p.evaluate(model, splits.test)
    assert all(math.isfinite(v) for v in scores.values())
    assert torch.equal(p.load(0).test.x, splits.test.x)
    assert p.load(1).test.x.shape == splits.test.x.shape


def test_too_large_splits_are_a_clear_error(fake_qm9: Path) -> None:
    with pytest.raises(ValueError, match="only 120 are available"):
        get_problem("qm9", n_train=200, n_val=20, n_test=20).load(0)


@pytest.mark.slow
def test_real_qm9() -> None:
    """Needs qm9pack (the `bench` extra); slow run only."""
    arrays = qm9data.load_qm9_arrays()
    assert arrays["features"].shape == (130831, 35)
    std = arrays["targets"].std(axis=0)
    names = list(qm9data.QM9_TARGETS)
    assert std[names.index("homo")] == pytest.approx(0.598, rel=0.01)  # eV, as in PyG
    assert std[names.index("r2")] == pytest.approx(280.5, rel=0.01)
    assert arrays["targets"][:, names.index("u0")].mean() == pytest.approx(-76.1, rel=0.01)
