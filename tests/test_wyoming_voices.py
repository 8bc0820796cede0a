"""Wyoming's voice choice on a multi-speaker Piper voice: the speakers in ``info``, the speaker
asked for reaching the model, its own cache entry, an unknown one refused by name."""

from __future__ import annotations

from typing import Any

import pytest
from wyoming.tts import Synthesize, SynthesizeVoice

from hoosh_edge.backends.engines.piper import PiperVoice
from tests.synth_piper import make_voice
from tests.wyoming_peer import access_lines, describe, exchange, run, wyoming_port, wyoming_toml


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> str:
    return make_voice(str(tmp_path_factory.mktemp("multi")), name="multi", num_speakers=3)


class Recording:
    """An onnxruntime session that keeps the speaker id of every run."""

    def __init__(self, session: Any) -> None:
        self.session, self.sids = session, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, outputs: Any, feeds: dict[str, Any]) -> Any:
        self.sids.append(int(feeds["sid"][0]))
        return self.session.run(outputs, feeds)


def test_synthesize_stream_feeds_the_speaker_to_the_model(multi):
    voice = PiperVoice.load(multi)
    voice._session = Recording(voice._session)
    pcm = b"".join(voice.synthesize_stream("Hello there. How are you today?", speaker_id=2))
    assert pcm and voice._session.sids and set(voice._session.sids) == {2}


def synth(port: int, text: str, speaker: str | None) -> list:
    v = SynthesizeVoice(name="multi", speaker=speaker)
    return run(exchange(port, [Synthesize(text=text, voice=v).event()], ("audio-stop", "error")))


def test_speakers_over_wyoming(gateway_factory, multi):
    gw = gateway_factory(wyoming_toml(f'[local.tts.voices]\nmulti = "{multi}"\n'))
    port = wyoming_port(gw)
    info, _ = describe(port)
    (voice,) = info.tts[0].voices
    assert [s.name for s in voice.speakers] == ["speaker0", "speaker1", "speaker2"]
    text = "The garage door is closing."
    for speaker in ("speaker1", "speaker2", "speaker1", "2"):
        assert synth(port, text, speaker)[-1].type == "audio-stop"
    lines = access_lines(gw, "wyoming:tts", 4)
    # Each speaker is its own cache entry; "2" is speaker2 by number.
    assert [x["cache"] for x in lines] == ["MISS", "MISS", "HIT", "HIT"]
    refused = synth(port, text, "nobody")
    assert (
        refused[-1].type == "error" and "speaker0, speaker1, speaker2" in refused[-1].data["text"]
    )
