"""No gevent primitive reaches an OS thread, whichever way the gateway is started.

Each test runs a child process that starts the way a real one does (``python hoosh_edge.py``,
``hoosh-edge serve``, ``python -m hoosh_edge serve``), then does real work in the pool threads —
decoding Ogg and WAV with soundfile and soxr, whisper.cpp and Piper on tiny synthetic models, a
ledger write in SQLite, logging — and reports every lock those threads and the libraries hold.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.synth_piper import make_voice
from tests.synth_whisper import make_synthetic_whisper

ROOT = Path(__file__).resolve().parent.parent

ENTRIES = {
    # python hoosh_edge.py: the script's own patching and imports, without serving.
    "script": "import runpy; runpy.run_path(str(ROOT / 'hoosh_edge.py'), run_name='entry')",
    # hoosh-edge serve: the console script's main(), up to listening on a port that is taken.
    "cli": "from hoosh_edge.cli import main; assert main(['serve', '--config', CFG]) == 2",
    # python -m hoosh_edge serve
    "module": textwrap.dedent("""
        import runpy
        sys.argv = ['hoosh_edge', 'serve', '--config', CFG]
        try:
            runpy.run_module('hoosh_edge', run_name='__main__', alter_sys=True)
        except SystemExit as e:
            assert e.code == 2, e.code
        """),
}

PROBE = """
import gc, io, json, logging, queue, threading, _thread
import gevent, gevent.hub, gevent.lock, gevent.thread
from gevent import monkey

GEVENT_LOCKS = (gevent.lock.Semaphore, gevent.lock.RLock, gevent.thread.LockType)
report = {"socket_patched": monkey.is_module_patched("socket"),
          "threading_patched": monkey.is_module_patched("threading")}

import numpy as np, soundfile, soxr, sqlite3, onnxruntime, llama_cpp
import llama_cpp.llama_chat_format
from hoosh_edge import threads, workers
from hoosh_edge.books.db import Database
from hoosh_edge.backends.engines import espeak as espeak_mod
from hoosh_edge.backends.engines.audio_in import decode_audio
from hoosh_edge.backends.engines.piper import PiperVoice
from hoosh_edge.backends.engines.whisper import WhisperModel

def clip(fmt, rate):
    t = np.arange(rate // 2) / rate
    buf = io.BytesIO()
    soundfile.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format=fmt)
    return buf.getvalue()

def made_in_thread():
    # What a library gets when it makes a lock, a condition or a queue inside a pool thread.
    logging.getLogger("probe").warning("logged from a pool thread")
    return [type(x).__module__ + "." + type(x).__qualname__ for x in (
        threading.Lock(), threading.RLock(), _thread.allocate_lock(),
        threading.Condition()._lock, threading.Event(), queue.SimpleQueue())]

report["made_in_threads"] = sorted(set(sum(
    (threads.run_blocking(made_in_thread) for _ in range(4)), [])))
report["made_in_books"] = threads.run_books(made_in_thread)

# Real work in real pool threads, several at once so that the threads meet on shared locks.
jobs = [gevent.spawn(threads.run_blocking, decode_audio, clip(fmt, rate))
        for fmt, rate in [("OGG", 22050), ("WAV", 44100), ("FLAC", 16000)] * 6]
whisper = threads.run_blocking(WhisperModel.load, WHISPER, 1)
voice = threads.run_blocking(PiperVoice.load, VOICE, 1)
gevent.joinall(jobs, raise_error=True)
samples = jobs[0].value.samples
texts = [gevent.spawn(threads.run_blocking, whisper.transcribe, samples) for _ in range(3)]
speech = [gevent.spawn(lambda: b"".join(threads.ThreadStream(voice.synthesize_stream,
                                                              "Hello there. Bye.")))
          for _ in range(3)]
gevent.joinall(texts + speech, raise_error=True)
db = Database.open(DATA)
def write():
    with db.write() as w:
        w.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        w.execute("INSERT INTO probe VALUES (1)")
gevent.joinall([gevent.spawn(threads.run_books, write) for _ in range(4)], raise_error=True)

# Locks the libraries made at import and keep: module attributes and class attributes.
found = []
for name, mod in list(sys.modules.items()):
    if mod is None or name.split(".")[0] == "gevent":
        continue
    for attr, value in list(vars(mod).items()):
        values = [(attr, value)]
        if isinstance(value, type) and value.__module__ == name:
            values += [(attr + "." + k, v) for k, v in vars(value).items()]
        found += [name + "." + a for a, v in values if isinstance(v, GEVENT_LOCKS)]
handlers = list(logging.root.handlers)
for lg in logging.Logger.manager.loggerDict.values():
    handlers += getattr(lg, "handlers", [])
found += ["logging handler %r" % h for h in handlers if isinstance(h.lock, GEVENT_LOCKS)]
if isinstance(logging._lock, GEVENT_LOCKS):
    found.append("logging._lock")
report["gevent_locks_in_libraries"] = found
report["named_locks"] = {
    "soundfile.SoundFile._sf_error_lock": type(soundfile.SoundFile._sf_error_lock).__module__,
    "logging._lock": type(logging._lock).__module__,
    "hoosh_edge.backends.engines.espeak.ESPEAK_LOCK": type(espeak_mod.ESPEAK_LOCK).__module__,
}
# A pool thread that ever blocked on a gevent primitive (a contended gevent lock, gevent's
# sleep) got a hub of its own; only the main thread may have one.
report["hubs"] = sum(1 for o in gc.get_objects() if isinstance(o, gevent.hub.Hub))
report["pools"] = workers.status()
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("native-locks")
    return d, make_synthetic_whisper(d / "ggml-synth.bin"), make_voice(str(d), name="tiny")


def run_child(entry: str, models, tmp_path: Path) -> dict:
    d, whisper, voice = models
    with socket.socket() as taken:  # serve() must stop at listening, after everything else
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "hoosh-edge.toml"
        cfg.write_text(f'[server]\nport = {port}\ndata_dir = "{tmp_path / "data"}"\n'
                       f'models_dir = "{tmp_path / "none"}"\n')  # fmt: skip
        head = (f"import sys\nfrom pathlib import Path\nROOT = Path({str(ROOT)!r})\n"
                f"CFG = {str(cfg)!r}\nWHISPER = {str(whisper)!r}\nVOICE = {str(voice)!r}\n"
                f"DATA = {str(tmp_path / 'probe-data')!r}\n")  # fmt: skip
        code = head + ENTRIES[entry] + "\n" + PROBE
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_pool_threads_only_ever_take_os_locks(entry, models, tmp_path):
    report = run_child(entry, models, tmp_path)
    assert report["socket_patched"] is True  # the hub still has cooperative sockets
    assert report["threading_patched"] is False
    native = {"_thread.lock", "_thread.RLock", "threading.Event", "_queue.SimpleQueue"}
    assert set(report["made_in_threads"]) <= native, report["made_in_threads"]
    assert set(report["made_in_books"]) <= native, report["made_in_books"]
    assert report["gevent_locks_in_libraries"] == []
    assert set(report["named_locks"].values()) == {"_thread"}, report["named_locks"]
    assert report["hubs"] == 1
    for name, pool in report["pools"].items():
        assert pool["busy"] == 0 and pool["queued"] == 0, (name, pool)


def test_a_gateway_started_after_a_full_monkey_patch_says_it_may_deadlock(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = tmp_path / "hoosh-edge.toml"
        cfg.write_text(f'[server]\nport = {taken.getsockname()[1]}\ndata_dir = "{tmp_path}"\n'
                       f'models_dir = "{tmp_path / "none"}"\n')  # fmt: skip
        code = ("from gevent import monkey; monkey.patch_all()\n"
                "from hoosh_edge.cli import main\n"
                f"raise SystemExit(main(['serve', '--config', {str(cfg)!r}]))\n")  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2  # the port is taken: it got as far as listening
    assert "threading was monkey-patched by gevent" in proc.stderr, proc.stderr
