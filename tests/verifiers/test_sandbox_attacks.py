"""Real attacks through the public ``verify()`` call, as root and as an ordinary user.

The hostile functions and the checks of the world outside live in `sandbox_attacks.py`; each run is a
fresh interpreter (so a fresh default pool), and the report lists every escape it saw.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNNER = HERE / "sandbox_attacks.py"
NOBODY = 65534


def _dirs():
    """A world-writable directory under the checkout and one under the host's /tmp."""
    visible = Path(tempfile.mkdtemp(prefix="sandbox-attacks-", dir=REPO / ".pytest_cache" if (REPO / ".pytest_cache").is_dir() else REPO))
    hidden = Path(tempfile.mkdtemp(prefix="sandbox-attacks-", dir="/tmp"))
    for d in (visible, hidden):
        os.chmod(d, 0o1777)
    return visible, hidden


def _report(cmd, env, visible, hidden, timeout=240):
    try:
        out = subprocess.run(cmd + [str(RUNNER), str(visible), str(hidden)], env=env, capture_output=True,
                             text=True, timeout=timeout, cwd="/")
    finally:
        shutil.rmtree(visible, ignore_errors=True)
        shutil.rmtree(hidden, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env(**extra):
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def _check(report, root):
    assert report["failures"] == [], "\n".join(report["failures"])
    iso = report["isolation"]
    assert iso["mode"] == "kernel" and iso["launcher"] == "bwrap"
    assert iso["pidns"] and iso["netns"] and iso["readonly_root"] and iso["seccomp"] and iso["nondumpable"]
    assert iso["root"] is root and iso["uid_drop"] is root
    assert len(report["attacks"]) >= 20


def test_attacks_as_current_user():
    visible, hidden = _dirs()
    report = _report([sys.executable], _env(), visible, hidden)
    _check(report, root=os.geteuid() == 0)


def _as_nobody():
    """(command prefix, environment) running Python as uid 65534, or a reason why not."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None, "needs root and setpriv to become an ordinary user"
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    # an interpreter the ordinary user can run: ours, or the system's of the same version
    version = "python%d.%d" % sys.version_info[:2]
    for exe in (f"/usr/bin/{version}", f"/usr/local/bin/{version}", sys.executable):
        if os.path.exists(exe) and subprocess.run(prefix + [exe, "-c", "import json"], capture_output=True).returncode == 0:
            break
    else:
        return None, f"no {version} interpreter readable by uid {NOBODY}"
    path = [p for p in sys.path if p and os.path.isdir(p) and ("site-packages" in p or p.endswith("/src"))]
    path.append(str(REPO / "src"))
    return prefix + [exe], _env(PYTHONPATH=":".join(path))


def _userns_allowed(prefix):
    unshare = shutil.which("unshare")
    r = subprocess.run(prefix[:-1] + [unshare or "unshare", "-U", "true"], capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip()


def test_attacks_as_ordinary_user():
    cmd, env = _as_nobody()
    if cmd is None:
        pytest.skip(env)
    ok, why = _userns_allowed(cmd)
    visible, hidden = _dirs()
    if not ok:
        # no unprivileged user namespaces: the sandbox must refuse, not run the code unprotected
        out = subprocess.run(cmd + ["-c", "from uniapl.verifiers import verify\n"
                                    "verify('x', ['autoif:code'], [{'source': 'def evaluate(r):\\n    return True'}])"],
                             env=env, capture_output=True, text=True, timeout=120, cwd="/")
        assert out.returncode != 0 and "SandboxUnavailable" in out.stderr, (why, out.stderr[-2000:])
        pytest.skip(f"unprivileged user namespaces refused here ({why}); refusal checked instead")
    report = _report(cmd, env, visible, hidden)
    _check(report, root=False)
