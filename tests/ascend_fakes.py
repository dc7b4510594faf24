"""Fake `atc`, `msit` and `npu-smi` executables for tests: they replay the recorded tool output
in tests/fixtures/ascend/ (see its README.md for where each format comes from).

- atc: writes <--output>.om (bytes of the ONNX) and prints ATC's success line.
- msit benchmark: marks the NPU busy (a state file) for BUSY_S seconds, then prints the recorded
  Performance Summary.
- npu-smi info: the recorded 310P3 table; npu-smi info -t power -i ID: IDLE_W, or BUSY_W while
  the fake msit runs, in the 310P format ("NPU Real-time Power(W) : x").
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "fixtures" / "ascend"
IDLE_W, BUSY_W, BUSY_S = 12.0, 30.0, 0.8

_ATC = """#!{py}
import sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
Path(args["output"] + ".om").write_bytes(b"FAKE-OM" + Path(args["model"]).read_bytes()[:64])
print("ATC start working now, please wait for a moment.")
print("ATC run success, welcome to the next use.")
"""

_MSIT = """#!{py}
import sys, time
from pathlib import Path
state = Path({state!r})
if sys.argv[1:2] != ["benchmark"] or "--om-model" not in sys.argv:
    sys.exit("usage: msit benchmark --om-model M")
if not Path(sys.argv[sys.argv.index("--om-model") + 1]).is_file():
    sys.exit("[ERROR] om model not found")
time.sleep(0.3)          # model load, near idle power
state.write_text("busy")
time.sleep({busy})
state.unlink()
print(Path({data!r}).read_text())
"""

_SMI = """#!{py}
import sys
from pathlib import Path
state = Path({state!r})
a = sys.argv[1:]
if a == ["info"]:
    print(Path({info!r}).read_text())
elif a[:3] == ["info", "-t", "power"]:
    print("\\tNPU Real-time Power(W)         : %.1f" % ({busy_w} if state.exists() else {idle_w}))
else:
    sys.exit(2)
"""


def install(bin_dir: Path, monkeypatch=None) -> Path:
    """Write the three fakes into bin_dir (and put it first on PATH when monkeypatch is given)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state = bin_dir / "npu-busy"
    py = sys.executable
    files = {
        "atc": _ATC.format(py=py),
        "msit": _MSIT.format(py=py, state=str(state), busy=BUSY_S, data=str(DATA / "msit_benchmark.txt")),
        "npu-smi": _SMI.format(py=py, state=str(state), info=str(DATA / "npu_smi_info_310p.txt"),
                               busy_w=BUSY_W, idle_w=IDLE_W),
    }
    for name, text in files.items():
        p = bin_dir / name
        p.write_text(text)
        p.chmod(0o755)
    if monkeypatch is not None:
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir
