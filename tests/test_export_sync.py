"The committed package must equal what `nbdev-export` writes from nbs/ (notebooks are the source)."
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _py_files(d: Path): return {p.relative_to(d) for p in d.rglob('*.py') if '__pycache__' not in p.parts}

def test_exported_package_is_in_sync(tmp_path):
    shutil.copy(ROOT / 'pyproject.toml', tmp_path)
    shutil.copytree(ROOT / 'nbs', tmp_path / 'nbs')
    (tmp_path / 'mvp_vpg').mkdir()
    shutil.copy(ROOT / 'mvp_vpg' / '__init__.py', tmp_path / 'mvp_vpg')
    exe = Path(sys.executable).with_name('nbdev-export')
    subprocess.run([str(exe) if exe.exists() else 'nbdev-export'], cwd=tmp_path, check=True, capture_output=True)
    fresh, committed = _py_files(tmp_path / 'mvp_vpg'), _py_files(ROOT / 'mvp_vpg')
    assert fresh == committed, f"modules differ: only exported {sorted(map(str, fresh - committed))}, only committed {sorted(map(str, committed - fresh))}"
    changed = [str(f) for f in sorted(fresh) if not filecmp.cmp(tmp_path / 'mvp_vpg' / f, ROOT / 'mvp_vpg' / f, shallow=False)]
    assert not changed, f"mvp_vpg/ differs from nbdev-export output in {changed}: edit the notebooks and run nbdev-export"
