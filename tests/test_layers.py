"The package is layered: a module imports only from its own or lower layers, vpg and mvp never import each other, no module imports itself back through others, and no module is long."
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'mvp_vpg'
LAYERS = {'utils': 0, 'data': 1, 'models': 2, 'sampling': 3, 'vpg': 4, 'mvp': 4, 'generation': 5, 'evaluation': 6, 'toy': 7, 'stages': 8}
SEPARATE = {frozenset({'vpg', 'mvp'})}     # same layer, but must not import each other
MAX_LINES = 420

def modules(pkg: Path) -> dict:
    "{dotted module name: file} of every module under `pkg` (package __init__ files under the package's name)."
    out = {}
    for f in sorted(pkg.rglob('*.py')):
        parts = list(f.relative_to(pkg.parent).with_suffix('').parts)
        if parts[-1] == '__init__': parts = parts[:-1]
        out['.'.join(parts)] = f
    return out

def imports(name: str, f: Path, known: set) -> set:
    "Modules of the package that module `name` imports anywhere in its body (top level and inside functions), relative or absolute."
    root = name.split('.')[0]
    is_pkg = f.name == '__init__.py'
    found = set()
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split('.') if is_pkg else name.split('.')[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else: mod = node.module or ''
            targets = [mod] + [f'{mod}.{a.name}' for a in node.names]
        else: continue
        for t in targets:
            if t.split('.')[0] != root: continue
            while t and t not in known: t = t.rpartition('.')[0]      # `from pkg.sub import name` -> pkg.sub
            if t and t != name: found.add(t)
    return found

def layer_of(mod: str):
    parts = mod.split('.')
    return (parts[1], LAYERS[parts[1]]) if len(parts) > 1 and parts[1] in LAYERS else (None, None)

def violations(pkg: Path) -> list[str]:
    "Every upward import, every vpg<->mvp import, and every import cycle among the modules of `pkg`."
    mods = modules(pkg)
    graph = {m: imports(m, f, set(mods)) for m, f in mods.items()}
    bad = []
    for m, deps in graph.items():
        if m.endswith('._modidx'): continue
        lm, lv = layer_of(m)
        for d in sorted(deps):
            ld, dv = layer_of(d)
            if lm is None and d.count('.') > 0 and ld is not None and m.count('.') == 0: continue   # the package root may re-export
            if lv is not None and dv is not None and dv > lv: bad.append(f'upward import: {m} ({lm}) imports {d} ({ld})')
            if lm and ld and lm != ld and frozenset({lm, ld}) in SEPARATE: bad.append(f'{m} imports {d}: {lm} and {ld} must not import each other')
            if lm is not None and ld is None and d != pkg.name and not d.endswith('._modidx'):
                bad.append(f'{m} imports {d}, which belongs to no layer')
    state, stack = {}, []
    def visit(m):                                   # depth-first search; a grey node reached again closes a cycle
        state[m] = 'grey'; stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 'grey': bad.append('import cycle: ' + ' -> '.join(stack[stack.index(d):] + [d]))
            elif d not in state: visit(d)
        stack.pop(); state[m] = 'black'
    for m in sorted(graph):
        if m not in state: visit(m)
    return bad

def long_modules(pkg: Path, limit: int = MAX_LINES) -> list[str]:
    return [f'{f.relative_to(pkg.parent)}: {n} lines' for m, f in modules(pkg).items()
            if not m.endswith('._modidx') and (n := len(f.read_text().splitlines())) > limit]

def test_every_module_belongs_to_a_layer():
    subs = {p.name for p in PKG.iterdir() if p.is_dir() and (p / '__init__.py').exists()}
    assert subs <= set(LAYERS), f"subpackages without a layer: {sorted(subs - set(LAYERS))}"

def test_imports_follow_the_layers():
    bad = violations(PKG)
    assert not bad, '\n'.join(bad)

def test_no_module_is_long():
    assert not long_modules(PKG), '\n'.join(long_modules(PKG))

def _fake(tmp_path, files: dict) -> Path:
    pkg = tmp_path / 'fakepkg'
    for rel, text in {'__init__.py': '', **{f'{d}/__init__.py': '' for d in LAYERS}, **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True); (pkg / rel).write_text(text)
    return pkg

@pytest.mark.parametrize('files, expect', [
    ({'utils/io.py': 'def f():\n    from ..stages import cli\n', 'stages/cli.py': ''}, 'upward import: fakepkg.utils.io'),
    ({'data/a.py': 'import fakepkg.models.b\n', 'models/b.py': ''}, 'upward import: fakepkg.data.a'),
    ({'mvp/a.py': 'from fakepkg.vpg.b import x\n', 'vpg/b.py': 'x = 1\n'}, 'must not import each other'),
    ({'models/a.py': 'from . import b\n', 'models/b.py': 'from .a import x\n'}, 'import cycle'),
])
def test_the_checks_catch_bad_imports(tmp_path, files, expect):
    assert any(expect in v for v in violations(_fake(tmp_path, files))), violations(_fake(tmp_path, files))

def test_a_clean_fake_package_passes(tmp_path):
    pkg = _fake(tmp_path, {'stages/cli.py': 'from ..utils import io\nfrom fakepkg.models.b import y\n', 'utils/io.py': '', 'models/b.py': 'y = 1\n'})
    assert violations(pkg) == []

def test_the_length_check_catches_a_long_module(tmp_path):
    pkg = _fake(tmp_path, {'utils/long.py': 'x = 1\n' * (MAX_LINES + 1)})
    assert long_modules(pkg) == [f'fakepkg/utils/long.py: {MAX_LINES + 1} lines']
