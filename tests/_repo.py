"""A throw-away copy of the repository for pipeline tests (what `git ls-files` sees, committed into a fresh git repo), and
one way to run a command in it with a clean environment."""
import shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def clean_env(cwd, **extra) -> dict:
    "The environment of a user's shell in `cwd`: this venv on PATH, no analytics, no network for Hugging Face."
    return {'PATH': f"{BIN}:/usr/bin:/bin", 'DVC_NO_ANALYTICS': '1', 'HF_HUB_OFFLINE': '1', 'HOME': str(cwd), **extra}

def run(cmd, cwd, check: bool = True, **env):
    "Run `cmd` in `cwd` (clean environment); with `check`, fail the test showing the output's tail."
    r = subprocess.run(cmd, cwd=cwd, env=clean_env(cwd, **env), capture_output=True, text=True)
    assert not check or r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r

def copy_repo(dest, drop=('metrics', 'reports', 'REPRODUCTION.md')) -> Path:
    "Copy the working tree's tracked and untracked-but-not-ignored files to `dest`, minus `drop`, as a fresh git repo."
    dest = Path(dest)
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, dest / f)
    for f in drop:                                           # outputs the run under test must produce itself
        shutil.rmtree(dest / f, ignore_errors=True); (dest / f).unlink(missing_ok=True)
    run(['git', 'init', '-q'], dest); run(['git', 'add', '-A'], dest)
    run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'copy'], dest)
    return dest
