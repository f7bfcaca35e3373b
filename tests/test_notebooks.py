"Run every notebook's tests (the cells under each definition) through nbdev, one pytest case per notebook."
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook_tests

CFG = get_config()
NBS = sorted(p for p in Path(CFG.nbs_path).glob('*.ipynb') if not p.name.startswith(('_', '.')))

def test_there_are_notebooks():
    assert len(NBS) >= 4, f"expected the library notebooks in {CFG.nbs_path}, found {NBS}"

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    ok, _ = run_notebook_tests(nb, skip_flags=CFG.tst_flags.split(), force_flags=None, basepath=CFG.config_path, cell_timeout=600)
    assert ok, f"tests in {nb.name} failed (run `nbdev-test {nb}` to see the cell)"
