"""Token → frame parsing: slot from the id, code 0 kept, resync at the next slot-0 token."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orpheus_tts.tokens import (
    AUDIO_TOKEN_BASE,
    AUDIO_TOKEN_END,
    CODEBOOK_SIZE,
    END_OF_SPEECH_TOKEN_ID,
    START_OF_SPEECH_TOKEN_ID,
    FrameParser,
    audio_token_id,
    frame_token_ids,
    frames_to_codes,
    split_audio_token,
    validate_frames,
)

F1 = (1, 2, 3, 4, 5, 6, 7)
F2 = (10, 20, 30, 40, 50, 60, 70)
F0 = (0, 0, 0, 0, 0, 0, 0)


def test_token_id_roundtrip_and_bounds():
    assert audio_token_id(0, 0) == AUDIO_TOKEN_BASE
    assert audio_token_id(6, CODEBOOK_SIZE - 1) == AUDIO_TOKEN_END - 1
    assert split_audio_token(audio_token_id(3, 17)) == (3, 17)
    assert split_audio_token(AUDIO_TOKEN_BASE - 1) is None
    assert split_audio_token(AUDIO_TOKEN_END) is None  # the two pad ids after the audio range
    with pytest.raises(ValueError):
        audio_token_id(7, 0)
    with pytest.raises(ValueError):
        audio_token_id(0, CODEBOOK_SIZE)


def test_clean_stream_gives_frames_and_keeps_code_zero():
    parser = FrameParser()
    ids = frame_token_ids(F1) + frame_token_ids(F0) + [END_OF_SPEECH_TOKEN_ID]
    assert parser.feed_many(ids) == [F1, F0]
    assert parser.ended
    assert parser.stats.frames == 2
    assert parser.stats.dropped_tokens == 0


def test_wrong_slot_drops_only_the_broken_frame_and_resyncs():
    parser = FrameParser()
    broken = frame_token_ids(F1)[:3] + [audio_token_id(5, 9)]  # slot 5 where 3 was due
    ids = broken + frame_token_ids(F1)[4:] + frame_token_ids(F2)
    assert parser.feed_many(ids) == [F2]
    # 3 partial + the wrong one + slots 4..6 of the broken frame while waiting for slot 0
    assert parser.stats.dropped_tokens == 7
    assert parser.stats.resyncs == 1


def test_slot_zero_mid_frame_restarts_the_frame_there():
    parser = FrameParser()
    ids = frame_token_ids(F1)[:4] + frame_token_ids(F2)
    assert parser.feed_many(ids) == [F2]
    assert parser.stats.dropped_tokens == 4


@pytest.mark.parametrize(
    "bad",
    [
        AUDIO_TOKEN_END,  # out of range (pad)
        AUDIO_TOKEN_END + 1,
        128001,  # text EOS
        START_OF_SPEECH_TOKEN_ID,
        42,  # a text token
    ],
)
def test_non_audio_token_breaks_the_frame(bad):
    parser = FrameParser()
    ids = frame_token_ids(F1)[:2] + [bad] + frame_token_ids(F1)[2:] + frame_token_ids(F2)
    assert parser.feed_many(ids) == [F2]
    assert parser.stats.non_audio_tokens == 1


def test_nothing_after_end_of_speech():
    parser = FrameParser()
    ids = frame_token_ids(F1)[:5] + [END_OF_SPEECH_TOKEN_ID] + frame_token_ids(F2)
    assert parser.feed_many(ids) == []
    assert parser.stats.dropped_tokens == 5


@given(
    st.lists(
        st.one_of(
            st.integers(0, AUDIO_TOKEN_END + 5),
            st.builds(audio_token_id, st.integers(0, 6), st.integers(0, CODEBOOK_SIZE - 1)),
        ),
        max_size=200,
    )
)
def test_any_stream_yields_only_valid_frames(ids):
    parser = FrameParser()
    frames = parser.feed_many(ids)
    for frame in frames:
        assert len(frame) == 7
        assert all(0 <= code < CODEBOOK_SIZE for code in frame)
    # Every frame's tokens appear contiguously, in slot order, in the input.
    text = ",".join(map(str, ids))
    for frame in frames:
        assert ",".join(map(str, frame_token_ids(frame))) in text


def test_frames_to_codes_levels():
    frames = np.array([F1, F2])
    l0, l1, l2 = frames_to_codes(frames)
    assert l0.tolist() == [1, 10]
    assert l1.tolist() == [2, 5, 20, 50]
    assert l2.tolist() == [3, 4, 6, 7, 30, 40, 60, 70]


def test_validate_frames_rejects_bad_windows():
    assert validate_frames(np.array([F1])).dtype == np.int64
    with pytest.raises(ValueError):
        validate_frames(np.array([[1, 2, 3]]))
    with pytest.raises(ValueError):
        validate_frames(np.array([[0, 0, 0, 0, 0, 0, CODEBOOK_SIZE]]))
    with pytest.raises(ValueError):
        validate_frames(np.array([[0, 0, 0, 0, 0, 0, -1]]))
    with pytest.raises(ValueError):
        validate_frames(np.zeros((0, 7), dtype=np.int64))
    with pytest.raises(ValueError):
        validate_frames(np.zeros((1, 7), dtype=np.float32))
